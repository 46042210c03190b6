// An LLM client on Go's net/http, which speaks HTTP/2 when the server's
// ALPN offers it: a streamed Chat Completions call, then a Messages call.
// Usage: h2_client BASE_URL CA_FILE API_KEY
package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"os"
)

func post(c *http.Client, url, key, body string) {
	req, err := http.NewRequest("POST", url, bytes.NewBufferString(body))
	if err != nil {
		panic(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := c.Do(req)
	if err != nil {
		panic(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		panic(err)
	}
	fmt.Printf("%s %d %d\n", resp.Proto, resp.StatusCode, len(data))
}

func main() {
	base, caFile, key := os.Args[1], os.Args[2], os.Args[3]
	pem, err := os.ReadFile(caFile)
	if err != nil {
		panic(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, ForceAttemptHTTP2: true}}
	post(c, base+"/v1/chat/completions", key,
		`{"model": "gpt-4o-mini", "stream": true, "stream_options": {"include_usage": true}, "messages": [{"role": "user", "content": "from go"}]}`)
	post(c, base+"/v1/messages", key,
		`{"model": "claude-haiku-4-5", "max_tokens": 32, "messages": [{"role": "user", "content": "from go too"}]}`)
}
