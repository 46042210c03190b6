// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* TLS plaintext: uprobes on the entry of SSL_write/SSL_read (and the _ex
 * variants, and GnuTLS's record functions) remember the buffer; one shared
 * uretprobe reports the bytes the call really transferred, read from that
 * buffer once it returns. Both run on every call of a busy TLS program,
 * so they are kept to a handful of helper calls each. Notices of new
 * programs and newly opened TLS libraries let user space hook them before
 * they are used. */
#include "common.bpf.h"

struct call {
	__u64 ssl;
	__u64 buf;
	__u64 count_ptr; /* size_t *written / *readbytes of the _ex variants */
	__u64 start_ns;
	__u32 fn;
	__u32 active; /* entered, not returned yet */
};

/* The call under way on each thread: task storage is found from the task
 * itself, without the hashing and bucket lock of a map keyed by thread,
 * and goes away with the thread. */
struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
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
	struct call *c = bpf_task_storage_get(&calls, bpf_get_current_task_btf(), 0,
					      BPF_LOCAL_STORAGE_GET_F_CREATE);

	if (!c) {
		stat_add(STAT_CALLS_MISSED, 1);
		return 0;
	}
	c->ssl = (__u64)ssl;
	c->buf = (__u64)buf;
	c->count_ptr = (__u64)count_ptr;
	c->start_ns = bpf_ktime_get_ns();
	c->fn = fn;
	c->active = 1;
	return 0;
}

/* A session is freed: its connection ended. Reported for connections that
 * carried traffic, then forgotten, since the next session allocated may
 * get the same address. */
static __always_inline int session_end(__u32 fn, void *session)
{
	struct conn_key key = { .ssl = (__u64)session, .tgid = bpf_get_current_pid_tgid() >> 32 };
	struct conn *c = bpf_map_lookup_elem(&conns, &key);
	__u32 zero = 0;
	struct ssl_event *ev;

	if (!c)
		return 0;
	ev = bpf_map_lookup_elem(&scratch, &zero);
	if (ev && task_wanted()) {
		fill_header(&ev->hdr, EVENT_SSL);
		ev->conn = c->id;
		ev->latency_ns = 0;
		ev->ret = 0;
		ev->len = 0;
		ev->offset = 0;
		ev->data_len = 0;
		ev->truncated = 0;
		ev->gap = 0;
		ev->fn = fn;
		ev->dir = DIR_CLOSE;
		ev->last = 1;
		ev->reserved = 0;
		submit(ev, offsetof(struct ssl_event, data), 0);
	}
	bpf_map_delete_elem(&conns, &key);
	return 0;
}

/* One entry program for every hooked function; the attach cookie says
 * which function this is (enum ssl_fn). Every data function takes the
 * session first and the buffer second; the _ex variants report the count
 * through their fourth argument. */
SEC("uprobe")
int BPF_KPROBE(tls_enter, void *session, void *buf, __u64 size, void *count_ptr)
{
	__u32 fn = bpf_get_attach_cookie(ctx);

	switch (fn) {
	case FN_SSL_FREE:
	case FN_GNUTLS_DEINIT:
		return session_end(fn, session);
	case FN_SSL_DO_HANDSHAKE:
	case FN_GNUTLS_HANDSHAKE:
		return call_enter(fn, session, NULL, NULL);
	case FN_SSL_WRITE_EX:
	case FN_SSL_READ_EX:
	case FN_SSL_WRITE_INTERNAL:
	case FN_SSL_READ_INTERNAL:
		return call_enter(fn, session, buf, count_ptr);
	default:
		return call_enter(fn, session, buf, NULL);
	}
}

#include "ssl_chunks.bpf.h"

SEC("uretprobe")
int BPF_KRETPROBE(tls_return)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct call *pending = bpf_task_storage_get(&calls, task, 0, 0);

	if (!pending || !pending->active)
		return 0;
	struct call c = *pending;

	pending->active = 0;

	/* GnuTLS returns ssize_t; OpenSSL's int leaves rax's upper half undefined. */
	bool wide = c.fn == FN_GNUTLS_RECORD_SEND || c.fn == FN_GNUTLS_RECORD_RECV;
	long ret = wide ? (long)PT_REGS_RC(ctx) : (long)(int)PT_REGS_RC(ctx);
	__u64 len = 0;
	__u8 dir;

	if (c.fn == FN_SSL_DO_HANDSHAKE || c.fn == FN_GNUTLS_HANDSHAKE) {
		dir = DIR_HANDSHAKE;
	} else {
		dir = (c.fn == FN_SSL_WRITE || c.fn == FN_SSL_WRITE_EX || c.fn == FN_SSL_WRITE_INTERNAL ||
		       c.fn == FN_GNUTLS_RECORD_SEND) ? DIR_SEND : DIR_RECV;
		if (c.fn == FN_SSL_WRITE_EX || c.fn == FN_SSL_READ_EX ||
		    c.fn == FN_SSL_WRITE_INTERNAL || c.fn == FN_SSL_READ_INTERNAL) {
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
	struct conn *cn = conn_of(c.ssl, task->tgid);

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
			return 0;
		}
	}
	if (cn && ev->gap && dir != DIR_HANDSHAKE)
		__sync_fetch_and_sub(&cn->lost[dir & 1], ev->gap);
	return 0;
}

/* --- Notices: where new TLS code may appear --- */

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct tls_notice);
} notice_scratch SEC(".maps");

/* Notices have a ring of their own, drained by a thread of their own: they
 * must never wait behind a flood of data records. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 << 10);
} notices SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);   /* pid_tgid */
	__type(value, __u64); /* user pointer to the path being opened */
} library_opens SEC(".maps");

static __always_inline void notify(struct tls_notice *n, __u32 what, __u32 path_len)
{
	fill_header(&n->hdr, EVENT_TLS_NOTICE);
	n->what = what;
	n->path_len = path_len & (PATH_MAX_LEN - 1);
	/* Hooking must win the race with the program's first TLS call: wake
	 * the reader now rather than when data piles up. */
	if (bpf_ringbuf_output(&notices, n, offsetof(struct tls_notice, path) + n->path_len, BPF_RB_FORCE_WAKEUP))
		stat_add(STAT_RING_FULL, 1);
}

/* Holding programs until their TLS code is hooked (collectors/hold.py): the
 * exec of a program user space does not know yet is also written to `holds`,
 * read by the process that holds them, which has no other work to wait
 * behind. Known programs are filtered out here and cost nothing. */
struct exe_key {
	__u64 dev; /* the superblock's, as the kernel encodes it */
	__u64 ino;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct exe_key);
	__type(value, __u8);
} known_exes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 64 << 10);
} holds SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32); /* 1: holding is on */
} hold_on SEC(".maps");

SEC("tp_btf/sched_process_exec")
int BPF_PROG(notice_exec, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	if (!task_wanted())
		return 0;
	__u32 zero = 0;
	struct tls_notice *n = bpf_map_lookup_elem(&notice_scratch, &zero);

	if (!n)
		return 0;
	long len = bpf_probe_read_kernel_str(n->path, PATH_MAX_LEN, BPF_CORE_READ(bprm, filename));

	notify(n, NOTICE_EXEC, len > 0 ? len - 1 : 0);

	__u32 *on = bpf_map_lookup_elem(&hold_on, &zero);

	if (!on || !*on)
		return 0;
	struct exe_key key = {
		.dev = BPF_CORE_READ(bprm, file, f_inode, i_sb, s_dev),
		.ino = BPF_CORE_READ(bprm, file, f_inode, i_ino),
	};

	if (bpf_map_lookup_elem(&known_exes, &key))
		return 0;
	/* The same record as the notice: its timestamp names this exec in both. */
	if (bpf_ringbuf_output(&holds, n, offsetof(struct tls_notice, path) + (n->path_len & (PATH_MAX_LEN - 1)),
			       BPF_RB_FORCE_WAKEUP))
		stat_add(STAT_RING_FULL, 1);
	return 0;
}

struct basename_ctx {
	const char *path;
	__u32 len;
	__u32 base;
};

static long find_basename(__u32 i, struct basename_ctx *c)
{
	if (i >= c->len)
		return 1;
	if (c->path[i & (PATH_MAX_LEN - 1)] == '/')
		c->base = i + 1;
	return 0;
}

/* Where the last path component starts. Runs on every open of every
 * process: the last BASENAME_SCAN bytes are looked through in place, and only
 * a longer last component takes the loop over the whole path. */
#define BASENAME_SCAN 48
static __always_inline __u32 basename_at(const char *path, __u32 len)
{
#pragma unroll
	for (__u32 i = 1; i <= BASENAME_SCAN; i++) {
		if (i > len)
			return 0;
		if (path[(len - i) & (PATH_MAX_LEN - 1)] == '/')
			return len - i + 1;
	}
	struct basename_ctx c = { .path = path, .len = len };

	bpf_loop(PATH_MAX_LEN, find_basename, &c, 0);
	return c.base;
}

/* Is the last path component libssl* or libgnutls*? Each byte is indexed
 * under the path's mask: the verifier loses the bound of the check above
 * when the compiler copies the offset to another register. */
static __always_inline bool tls_library_name(const char *path, __u32 len)
{
	__u32 base = basename_at(path, len);

	if (base > PATH_MAX_LEN - 10)
		return false;
	barrier_var(base); /* keeps the masks below, which the compiler would drop after the check */
#define NAME_AT(k) path[(base + (k)) & (PATH_MAX_LEN - 1)]
	if (NAME_AT(0) != 'l' || NAME_AT(1) != 'i' || NAME_AT(2) != 'b')
		return false;
	if (NAME_AT(3) == 's' && NAME_AT(4) == 's' && NAME_AT(5) == 'l')
		return true;
	return NAME_AT(3) == 'g' && NAME_AT(4) == 'n' && NAME_AT(5) == 'u' && NAME_AT(6) == 't' && NAME_AT(7) == 'l' &&
	       NAME_AT(8) == 's';
#undef NAME_AT
}

static __always_inline int library_open_enter(const char *path)
{
	if (!task_wanted())
		return 0;
	__u32 zero = 0;
	struct tls_notice *n = bpf_map_lookup_elem(&notice_scratch, &zero);

	if (!n)
		return 0;
	long len = bpf_probe_read_user_str(n->path, PATH_MAX_LEN, path);

	if (len <= 1 || !tls_library_name(n->path, len - 1))
		return 0;
	__u64 id = bpf_get_current_pid_tgid();
	__u64 ptr = (__u64)path;

	bpf_map_update_elem(&library_opens, &id, &ptr, BPF_ANY);
	return 0;
}

static __always_inline int library_open_exit(long ret)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u64 *ptr = bpf_map_lookup_elem(&library_opens, &id);

	if (!ptr)
		return 0;
	__u64 path = *ptr;

	bpf_map_delete_elem(&library_opens, &id);
	if (ret < 0)
		return 0;
	__u32 zero = 0;
	struct tls_notice *n = bpf_map_lookup_elem(&notice_scratch, &zero);

	if (!n)
		return 0;
	long len = bpf_probe_read_user_str(n->path, PATH_MAX_LEN, (void *)path);

	if (len > 1)
		notify(n, NOTICE_OPEN, len - 1);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_openat")
int notice_openat_enter(struct trace_event_raw_sys_enter *ctx)
{
	return library_open_enter((const char *)ctx->args[1]);
}

SEC("tracepoint/syscalls/sys_exit_openat")
int notice_openat_exit(struct trace_event_raw_sys_exit *ctx)
{
	return library_open_exit(ctx->ret);
}
