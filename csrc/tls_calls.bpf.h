/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* What the TLS objects other than ssl.bpf.c share: one id per connection,
 * and reporting a call's plaintext as ssl_event records, split into
 * SSL_CHUNK pieces, with the bytes lost to a full ring counted against the
 * connection. Each object numbers its connections from its own CONN_ID_BASE
 * (events.h) so ids never collide in one process. */
#ifndef AGENTSIGHT_TLS_CALLS_BPF_H
#define AGENTSIGHT_TLS_CALLS_BPF_H

#include "common.bpf.h"

#ifndef CONN_ID_BASE
#error "define CONN_ID_BASE before including tls_calls.bpf.h"
#endif

struct conn_key {
	__u64 session; /* the TLS stack's connection object */
	__u32 tgid;
	__u32 reserved;
};

struct conn {
	__u64 id;
	__u64 lost[2];  /* per direction: bytes of whole calls the ring had no room for */
	__u64 inflight; /* calls entered and not returned (reported at their return) */
	__u64 closing;  /* closed while calls were in flight (its fn): the last one ends it */
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
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

static __always_inline struct conn *conn_of(__u64 session, __u32 tgid)
{
	struct conn_key key = { .session = session, .tgid = tgid };
	struct conn *c = bpf_map_lookup_elem(&conns, &key);

	if (c)
		return c;
	struct conn fresh = { .id = CONN_ID_BASE + __sync_fetch_and_add(&conn_seq, 1) + 1 };

	bpf_map_update_elem(&conns, &key, &fresh, BPF_NOEXIST);
	return bpf_map_lookup_elem(&conns, &key);
}

static __always_inline void ssl_event_init(struct ssl_event *ev, __u64 conn, __u8 fn, __u8 dir)
{
	fill_header(&ev->hdr, EVENT_SSL);
	ev->conn = conn;
	ev->latency_ns = 0;
	ev->ret = 0;
	ev->len = 0;
	ev->offset = 0;
	ev->data_len = 0;
	ev->truncated = 0;
	ev->gap = 0;
	ev->fn = fn;
	ev->dir = dir;
	ev->last = 1;
	ev->reserved = 0;
}

/* The session ended: reported for connections that carried traffic, then
 * forgotten, since its address may be reused for the next one. With calls
 * still in flight, their data comes first: the last of them ends it. */
static __always_inline void session_end(__u8 fn, __u64 session, __u32 tgid)
{
	struct conn_key key = { .session = session, .tgid = tgid };
	struct conn *c = bpf_map_lookup_elem(&conns, &key);
	__u32 zero = 0;
	struct ssl_event *ev;

	if (!c)
		return;
	if (c->inflight) {
		c->closing = fn;
		return;
	}
	ev = bpf_map_lookup_elem(&scratch, &zero);
	if (ev) {
		ssl_event_init(ev, c->id, fn, DIR_CLOSE);
		submit(ev, offsetof(struct ssl_event, data), 0);
	}
	bpf_map_delete_elem(&conns, &key);
}

/* A call that was counted in flight on `cn` has returned. */
static __always_inline void call_done(struct conn *cn, __u64 session, __u32 tgid)
{
	if (__sync_fetch_and_sub(&cn->inflight, 1) == 1 && cn->closing)
		session_end(cn->closing, session, tgid);
}

#include "ssl_chunks.bpf.h"

/* Reports `len` bytes at `buf` that one call moved on connection `id`;
 * `cn` counts its losses (NULL when the connection is no longer in the map:
 * it was closed while the call was under way, or the map was full). */
static __always_inline void emit_call(__u64 id, struct conn *cn, __u8 fn, __u8 dir, __u64 buf, __u64 len,
				      __s64 ret, __u64 start_ns)
{
	__u32 zero = 0;
	struct ssl_event *ev = bpf_map_lookup_elem(&scratch, &zero);

	if (!ev)
		return;
	if (len > 0xffffffffULL)
		len = 0xffffffffULL;
	ssl_event_init(ev, id, fn, dir);
	ev->latency_ns = start_ns ? ev->hdr.ts_ns - start_ns : 0;
	ev->ret = ret;
	ev->len = len;

	__u32 captured = len < cfg.max_capture ? len : cfg.max_capture;

	ev->truncated = len - captured;
	if (cn)
		ev->gap = cn->lost[dir & 1];
	if (!captured) {
		if (submit(ev, offsetof(struct ssl_event, data), 0))
			return;
	} else {
		struct chunk_ctx cc = { .buf = buf, .captured = captured };

		/* Nearly every call fits one record: no loop, no callback. */
		if (captured <= SSL_CHUNK)
			emit_chunk_at(0, &cc);
		else
			bpf_loop((captured + SSL_CHUNK - 1) / SSL_CHUNK, emit_chunk, &cc, 0);
		/* With no record of the call out, user space cannot know it
		 * happened: the next call on this conn reports the gap. A call
		 * cut after its first record is completed by user space. */
		if (cc.failed && !cc.sent) {
			if (cn)
				__sync_fetch_and_add(&cn->lost[dir & 1], len);
			return;
		}
	}
	if (cn && ev->gap)
		__sync_fetch_and_sub(&cn->lost[dir & 1], ev->gap);
}

#endif
