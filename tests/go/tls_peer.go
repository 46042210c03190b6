// A Go HTTPS client and server for the tests, standard library only:
//
//	tls_peer serve CERT KEY          prints "port N", serves until stdin closes, then shuts down
//	tls_peer get URL CA BODY h1|h2 [CONTENT-TYPE [HEADER VALUE]]
//	                                 POSTs BODY, prints the protocol and the answer
//
// The server answers POST /echo with "echo:" and the body, HTTP/1.1 or
// HTTP/2 as the client's ALPN asks.
package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
)

func serve(cert, key string) error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/echo", func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		reply := append([]byte("echo:"), body...)
		w.Header().Set("Content-Length", strconv.Itoa(len(reply)))
		w.Write(reply)
	})
	fmt.Printf("port %d\n", ln.Addr().(*net.TCPAddr).Port)
	srv := &http.Server{Handler: mux}
	done := make(chan error)
	go func() {
		io.Copy(io.Discard, os.Stdin)
		// Every answer finishes being written before the server exits.
		done <- srv.Shutdown(context.Background())
	}()
	if err := srv.ServeTLS(ln, cert, key); err != http.ErrServerClosed {
		return err
	}
	return <-done
}

func get(url, ca, body, proto string, extra []string) error {
	pem, err := os.ReadFile(ca)
	if err != nil {
		return err
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pem)
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}
	if proto == "h2" {
		tr.ForceAttemptHTTP2 = true
	} else {
		tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
	}
	client := &http.Client{Transport: tr}
	req, err := http.NewRequest("POST", url, bytes.NewReader([]byte(body)))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "text/plain")
	if len(extra) > 0 {
		req.Header.Set("Content-Type", extra[0])
	}
	if len(extra) > 2 {
		req.Header.Set(extra[1], extra[2])
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	got, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return err
	}
	tr.CloseIdleConnections()
	fmt.Printf("%s %s", resp.Proto, got)
	return nil
}

func main() {
	var err error
	switch {
	case len(os.Args) == 4 && os.Args[1] == "serve":
		err = serve(os.Args[2], os.Args[3])
	case len(os.Args) >= 6 && os.Args[1] == "get":
		err = get(os.Args[2], os.Args[3], os.Args[4], os.Args[5], os.Args[6:])
	default:
		err = fmt.Errorf("usage: tls_peer serve CERT KEY | get URL CA BODY h1|h2 [CONTENT-TYPE [HEADER VALUE]]")
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
