// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* TLS plaintext: uprobes on the entry of SSL_write/SSL_read (and the _ex
 * variants) remember the buffer; one shared uretprobe reports the bytes the
 * call really transferred, read from that buffer once it returns. */
#include "common.bpf.h"

struct call {
	__u64 ssl;
	__u64 buf;
	__u64 count_ptr; /* size_t *written / *readbytes of the _ex variants */
	__u64 start_ns;
	__u32 fn;
	__u32 reserved;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64); /* pid_tgid */
	__type(value, struct call);
} calls SEC(".maps");

struct conn_key {
	__u64 ssl;
	__u32 tgid;
	__u32 reserved;
};

struct conn {
	__u64 id;
	__u64 lost[2]; /* per direction: bytes of whole calls the ring had no room for */
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct conn_key);
	__type(value, struct conn);
} conns SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ssl_event);
} scratch SEC(".maps");

__u64 conn_seq = 0;

static __always_inline struct conn *conn_of(__u64 ssl, __u32 tgid)
{
	struct conn_key key = { .ssl = ssl, .tgid = tgid };
	struct conn *c = bpf_map_lookup_elem(&conns, &key);

	if (c)
		return c;
	struct conn fresh = { .id = __sync_fetch_and_add(&conn_seq, 1) + 1 };

	bpf_map_update_elem(&conns, &key, &fresh, BPF_NOEXIST);
	return bpf_map_lookup_elem(&conns, &key);
}

static __always_inline int call_enter(__u32 fn, void *ssl, const void *buf, void *count_ptr)
{
	if (!task_wanted())
		return 0;
	__u64 id = bpf_get_current_pid_tgid();
	struct call c = {
		.ssl = (__u64)ssl,
		.buf = (__u64)buf,
		.count_ptr = (__u64)count_ptr,
		.start_ns = bpf_ktime_get_ns(),
		.fn = fn,
	};

	bpf_map_update_elem(&calls, &id, &c, BPF_ANY);
	return 0;
}

SEC("uprobe")
int BPF_KPROBE(ssl_write_enter, void *ssl, const void *buf, int num)
{
	return call_enter(FN_SSL_WRITE, ssl, buf, NULL);
}

SEC("uprobe")
int BPF_KPROBE(ssl_read_enter, void *ssl, void *buf, int num)
{
	return call_enter(FN_SSL_READ, ssl, buf, NULL);
}

SEC("uprobe")
int BPF_KPROBE(ssl_write_ex_enter, void *ssl, const void *buf, size_t num, size_t *written)
{
	return call_enter(FN_SSL_WRITE_EX, ssl, buf, written);
}

SEC("uprobe")
int BPF_KPROBE(ssl_read_ex_enter, void *ssl, void *buf, size_t num, size_t *readbytes)
{
	return call_enter(FN_SSL_READ_EX, ssl, buf, readbytes);
}

SEC("uprobe")
int BPF_KPROBE(ssl_do_handshake_enter, void *ssl)
{
	return call_enter(FN_SSL_DO_HANDSHAKE, ssl, NULL, NULL);
}

/* A freed SSL's address may be handed to the next connection: forget it so
 * that connection gets an id of its own. */
SEC("uprobe")
int BPF_KPROBE(ssl_free_enter, void *ssl)
{
	struct conn_key key = { .ssl = (__u64)ssl, .tgid = bpf_get_current_pid_tgid() >> 32 };

	bpf_map_delete_elem(&conns, &key);
	return 0;
}

struct chunk_ctx {
	__u64 buf;
	__u32 captured;
	__u32 sent;
	bool failed;
};

static long emit_chunk(__u32 i, struct chunk_ctx *cc)
{
	__u32 zero = 0;
	struct ssl_event *ev = bpf_map_lookup_elem(&scratch, &zero);
	__u32 offset = i * SSL_CHUNK;

	if (!ev || offset >= cc->captured)
		return 1;
	__u32 n = cc->captured - offset;

	if (n > SSL_CHUNK)
		n = SSL_CHUNK;
	/* The same value, in a form the verifier can bound: 1..SSL_CHUNK. */
	n = ((n - 1) & (SSL_CHUNK - 1)) + 1;
	ev->offset = offset;
	ev->data_len = n;
	ev->last = offset + n >= cc->captured;
	if (bpf_probe_read_user(ev->data, n, (void *)(cc->buf + offset))) {
		/* Paged-out buffer: report the call without these bytes. */
		stat_add(STAT_READ_FAULT, 1);
		ev->data_len = 0;
		n = 0;
	}
	/* On failure the call stops here: every byte from offset on is lost. */
	if (submit(ev, offsetof(struct ssl_event, data) + n, cc->captured - offset)) {
		cc->failed = true;
		return 1;
	}
	cc->sent++;
	return 0;
}

SEC("uretprobe")
int BPF_KRETPROBE(ssl_return)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct call *pending = bpf_map_lookup_elem(&calls, &id);

	if (!pending)
		return 0;
	struct call c = *pending;

	bpf_map_delete_elem(&calls, &id);

	int ret = (int)PT_REGS_RC(ctx);
	__u64 len = 0;
	__u8 dir;

	if (c.fn == FN_SSL_DO_HANDSHAKE) {
		dir = DIR_HANDSHAKE;
	} else {
		dir = (c.fn == FN_SSL_WRITE || c.fn == FN_SSL_WRITE_EX) ? DIR_SEND : DIR_RECV;
		if (c.fn == FN_SSL_WRITE_EX || c.fn == FN_SSL_READ_EX) {
			if (ret == 1 && c.count_ptr)
				bpf_probe_read_user(&len, sizeof(len), (void *)c.count_ptr);
		} else if (ret > 0) {
			len = ret;
		}
		/* Nothing moved (want-read/want-write, errors): not data. */
		if (!len)
			return 0;
	}
	if (len > 0xffffffffULL)
		len = 0xffffffffULL;

	__u32 zero = 0;
	struct ssl_event *ev = bpf_map_lookup_elem(&scratch, &zero);
	struct conn *cn = conn_of(c.ssl, id >> 32);

	if (!ev)
		return 0;
	fill_header(&ev->hdr, EVENT_SSL);
	ev->conn = cn ? cn->id : 0;
	ev->latency_ns = ev->hdr.ts_ns - c.start_ns;
	ev->ret = ret;
	ev->len = len;
	ev->fn = c.fn;
	ev->dir = dir;
	ev->reserved = 0;

	__u32 captured = len < cfg.max_capture ? len : cfg.max_capture;

	ev->truncated = len - captured;
	ev->gap = 0;
	if (cn && dir != DIR_HANDSHAKE) {
		ev->gap = cn->lost[dir & 1];
	}

	if (!captured) {
		ev->offset = 0;
		ev->data_len = 0;
		ev->last = 1;
		if (submit(ev, offsetof(struct ssl_event, data), 0))
			return 0;
	} else {
		struct chunk_ctx cc = { .buf = c.buf, .captured = captured };

		bpf_loop((captured + SSL_CHUNK - 1) / SSL_CHUNK, emit_chunk, &cc, 0);
		/* With no record of the call out, user space cannot know it
		 * happened: the next call on this conn reports the gap. A call
		 * cut after its first record is completed by user space. */
		if (cc.failed && !cc.sent) {
			if (cn)
				__sync_fetch_and_add(&cn->lost[dir & 1], len);
			return 0;
		}
	}
	if (cn && ev->gap && dir != DIR_HANDSHAKE)
		__sync_fetch_and_sub(&cn->lost[dir & 1], ev->gap);
	return 0;
}
