/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* Event records written to the ring buffers, shared by every BPF program.
 * agentsight/events.py describes the same layouts with construct; a test
 * compares both against the BTF of the compiled objects. Every field is
 * naturally aligned so the layouts need no packing rules. */
#ifndef AGENTSIGHT_EVENTS_H
#define AGENTSIGHT_EVENTS_H

#define TASK_COMM_LEN 16

/* Largest piece of one SSL call carried by a single record; bigger calls are
 * split into several records with increasing offsets. Power of two. */
#define SSL_CHUNK 16384
/* Bytes of a new program's argument area captured at exec. Power of two. */
#define ARGS_MAX 8192
#define FILENAME_MAX_LEN 512
#define PATH_MAX_LEN 512
/* A path resolved in the kernel: its components, leaf first, each ending in
 * NUL. The walk stops adding components at PATH_WALK_MAX bytes; the buffer
 * has room for one more full component. */
#define PATH_WALK_MAX 2048
#define PATH_RESOLVED_BUF 4096
#define PATH_DEPTH_MAX 64
/* Variable parts are placed at offsets bounded by power-of-two masks, which
 * the verifier can follow; the buffers leave room behind the largest. */
#define EXEC_TAIL_OFFSET_MASK 16383 /* file name + arguments end below this */
#define FILE_DATA_BUF 16384

enum event_kind {
	EVENT_SSL = 1,
	EVENT_EXEC = 2,
	EVENT_EXIT = 3,
	EVENT_FORK = 4,
	EVENT_OPEN = 5,
	EVENT_TLS_NOTICE = 6, /* internal: a file that may hold a TLS library appeared */
	EVENT_FILE = 7,       /* unlink, rmdir, rename */
	EVENT_CONNECT = 8,
};

struct event_header {
	__u64 ts_ns; /* CLOCK_MONOTONIC */
	__u32 pid;   /* thread group id */
	__u32 tid;
	__u32 uid;
	__u16 kind;  /* enum event_kind */
	__u16 reserved;
	char comm[TASK_COMM_LEN];
};

enum ssl_fn {
	FN_SSL_WRITE = 0,
	FN_SSL_READ = 1,
	FN_SSL_WRITE_EX = 2,
	FN_SSL_READ_EX = 3,
	FN_SSL_DO_HANDSHAKE = 4,
	FN_GNUTLS_RECORD_SEND = 5,
	FN_GNUTLS_RECORD_RECV = 6,
	FN_GNUTLS_HANDSHAKE = 7,
	FN_SSL_FREE = 8,       /* the session ends: reported as DIR_CLOSE */
	FN_GNUTLS_DEINIT = 9,
	/* OpenSSL's internal functions behind SSL_write/SSL_read and their _ex
	 * variants, with the _ex arguments: cheaper to hook (see
	 * agentsight/collectors/tls/openssl.py). */
	FN_SSL_WRITE_INTERNAL = 10,
	FN_SSL_READ_INTERNAL = 11,
	/* Go's crypto/tls (csrc/go_tls.bpf.c). */
	FN_GO_TLS_WRITE = 12,
	FN_GO_TLS_READ = 13,
	FN_GO_TLS_CLOSE = 14,
	/* The AEAD layer of aws-lc / BoringSSL (csrc/aead_tls.bpf.c). */
	FN_AEAD_SEAL = 15,
	FN_AEAD_SEAL_SCATTER = 16,
	FN_AEAD_OPEN = 17,
	FN_AEAD_INIT = 18,
	FN_AEAD_INIT_WITH_DIRECTION = 19,
	FN_SOCKET_CLOSE = 20, /* close(2) of the socket under an AEAD connection */
	/* ring's AEAD algorithms (Rust ABI: see csrc/aead_tls.bpf.c). */
	FN_RING_AES_GCM_SEAL = 21,
	FN_RING_AES_GCM_OPEN = 22,
	FN_RING_CHACHA_SEAL = 23,
	FN_RING_CHACHA_OPEN = 24,
	FN_RING_AES_GCM_INIT_128 = 25,
	FN_RING_AES_GCM_INIT_256 = 26,
	FN_RING_CHACHA_INIT = 27,
};

/* Where each object's connection ids start, so that ids from two objects
 * never collide in one process: ssl.bpf.c counts from 1. */
#define CONN_ID_BASE_GO (1ULL << 40)
#define CONN_ID_BASE_AEAD (2ULL << 40)

enum ssl_dir {
	DIR_SEND = 0,
	DIR_RECV = 1,
	DIR_HANDSHAKE = 2,
	DIR_CLOSE = 3,
};

struct ssl_event {
	struct event_header hdr;
	__u64 conn;       /* id of the TLS session, assigned in the kernel */
	__u64 latency_ns; /* time spent inside the call */
	__s64 ret;        /* the function's return value */
	__u32 len;        /* bytes the call transferred */
	__u32 offset;     /* position of data[0] within the call's bytes */
	__u32 data_len;   /* bytes of data[] in this record */
	__u32 truncated;  /* bytes of the call beyond the capture limit */
	__u32 gap;        /* bytes of this conn and direction lost before this call */
	__u8 fn;          /* enum ssl_fn */
	__u8 dir;         /* enum ssl_dir */
	__u8 last;        /* 1 on the call's final record */
	__u8 reserved;
	char data[SSL_CHUNK];
};

struct exec_event {
	struct event_header hdr;
	__u32 ppid;
	__u32 filename_len;
	__u32 args_len;       /* NUL-separated argv bytes after the file name */
	__u32 args_truncated; /* 1 when the argument area was longer than ARGS_MAX */
	__u32 cwd_len;        /* resolved working directory after the arguments */
	__u32 cwd_truncated;
	char data[EXEC_TAIL_OFFSET_MASK + 1 + PATH_RESOLVED_BUF];
};

struct exit_event {
	struct event_header hdr;
	__u64 duration_ns;
	__u32 exit_code; /* wait status: code << 8 | signal | 0x80 if core dumped */
	__u32 ppid;
};

struct fork_event {
	struct event_header hdr;
	__u32 child_pid;
	__u32 reserved;
};

struct open_event {
	struct event_header hdr;
	__s64 ret;
	__s32 flags;
	__u32 path_len;     /* the path as given */
	__u32 resolved_len; /* the opened file's path, resolved (successful opens) */
	__u32 resolved_truncated;
	char data[PATH_MAX_LEN + PATH_RESOLVED_BUF];
};

enum file_op {
	FILE_UNLINK = 1,
	FILE_RMDIR = 2,
	FILE_RENAME = 3,
};

/* Relative paths come with the directory they are relative to, resolved. */
struct file_event {
	struct event_header hdr;
	__s64 ret;
	__u32 op;       /* enum file_op */
	__u32 flags;
	__u32 path_len;
	__u32 path2_len; /* rename: the new name */
	__u32 dir_len;
	__u32 dir2_len;
	char data[FILE_DATA_BUF];
};

struct connect_event {
	struct event_header hdr;
	__s64 ret;       /* 0, or -errno (-EINPROGRESS for non-blocking sockets) */
	__u16 family;    /* AF_INET, AF_INET6 */
	__u16 port;      /* host byte order */
	__u32 reserved;
	__u8 addr[16];
};

enum tls_notice_what {
	NOTICE_EXEC = 1, /* the task exec'd a new program */
	NOTICE_OPEN = 2, /* the task opened a file named like a TLS library */
};

struct tls_notice {
	struct event_header hdr;
	__u32 what;     /* enum tls_notice_what */
	__u32 path_len;
	char path[PATH_MAX_LEN];
};

/* Settings written into each object's .rodata before it is loaded, so the
 * verifier prunes the filters that are off. */
struct config {
	__u32 tgid;         /* only this process; 0: any */
	__u32 follow;       /* only processes in the `traced` map, which forks extend;
	                     * comm then names programs whose exec adds them */
	__u32 uid;          /* only this real uid, when filter_uid is set */
	__u32 filter_uid;
	__u32 max_capture;  /* ssl: bytes of one call captured at most */
	__u32 self_tgid;    /* agentsight itself: never reported */
	__u64 wakeup_bytes; /* wake the consumer once this much data is pending */
	char comm[TASK_COMM_LEN]; /* only tasks of this name; "": any */
};

/* Indexes of the per-CPU counters in the `stats` map of each object. */
enum stat_index {
	STAT_RING_FULL = 0,      /* records the ring buffer had no room for */
	STAT_RING_FULL_BYTES = 1,/* data bytes those records would have carried */
	STAT_CALLS_MISSED = 2,   /* TLS calls missed: no memory to note their entry */
	STAT_READ_FAULT = 3,     /* user memory that could not be read */
	STAT_UNMATCHED = 4,      /* AEAD records whose connection or record type was not found */
	STAT_MAX = 5,
};

#endif
