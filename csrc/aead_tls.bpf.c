// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* TLS plaintext at the AEAD layer (aws-lc, BoringSSL's libcrypto): rustls
 * on aws-lc-rs, and any TLS stack whose own functions cannot be found.
 *
 * Each TLS 1.2/1.3 record is sealed in plaintext by EVP_AEAD_CTX_seal or
 * _seal_scatter (read at entry) and opened by EVP_AEAD_CTX_open (read when
 * it returns). The AEAD knows nothing of connections, so each key (its
 * EVP_AEAD_CTX) is tied to the socket its thread last read from when the
 * key is initialised: TLS derives its keys while processing what the peer
 * just sent. The records of that key then belong to the socket's
 * connection, in both directions. A key with no socket known by then is
 * tied at its first record to the socket its thread last read from.
 *
 * ring (rustls' other provider) seals and opens through the functions of
 * its Algorithm statics, in the Rust ABI: the result through a pointer in
 * rdi, the key in rsi, the nonce pointer in rdx, the additional data in
 * rcx/r8, the record in r9 and the first stack slot, and for open the
 * start of the ciphertext in the next. Its keys are made on the stack and
 * moved, so a ring key is tied at its first record to the socket its
 * thread had last read when it last made a key.
 *
 * The record type comes from the additional data (TLS 1.2: its ninth byte)
 * or from the last non-zero byte of the plaintext (TLS 1.3, which may pad
 * with zeros after it). Only application data is reported. */
#define CONN_ID_BASE CONN_ID_BASE_AEAD
#include "tls_calls.bpf.h"

#define S_IFMT 0170000
#define S_IFSOCK 0140000
#define TLS13_AD_LEN 5
#define TLS12_AD_LEN 13
#define CONTENT_APPLICATION_DATA 23
/* TLS 1.3 padding looked through for the content type, at most. */
#define TAIL 32

/* Executables (inode numbers) whose AEAD functions are hooked: only their
 * threads have their socket reads noted. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u64);
	__type(value, __u8);
} aead_exes SEC(".maps");

struct key_id {
	__u64 ctx; /* EVP_AEAD_CTX * */
	__u32 tgid;
	__u32 reserved;
};

/* Each key -> the inode of its socket. Small: a socket's close walks it. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 8192);
	__type(key, struct key_id);
	__type(value, __u64);
} aead_keys SEC(".maps");

struct aead_thread {
	__u64 recv_socket;   /* inode of the socket this thread last read from */
	__u64 init_socket;   /* recv_socket when this thread last made a ring key */
	__u64 open_ctx;      /* the open call under way: its key */
	__u64 open_out;
	__u64 open_out_len;  /* size_t *out_len (aws-lc), or 0 */
	__u64 open_len;      /* the plaintext's length, when known at entry (ring) */
	__u64 open_start_ns;
	__u32 open_ad_len;
	__u8 open_type;      /* TLS 1.2: the record type from the additional data */
	__u8 open_active;
	__u8 open_fn;
	__u8 reserved;
};

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct aead_thread);
} aead_threads SEC(".maps");

static __always_inline struct aead_thread *thread_state(bool create)
{
	return bpf_task_storage_get(&aead_threads, bpf_get_current_task_btf(), 0,
				    create ? BPF_LOCAL_STORAGE_GET_F_CREATE : 0);
}

/* The inode of fd if it is a socket, else 0. */
static __always_inline __u64 socket_inode(__u32 fd)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
	struct file **fds = BPF_CORE_READ(fdt, fd);
	struct file *f = NULL;

	if (fd >= BPF_CORE_READ(fdt, max_fds))
		return 0;
	if (bpf_probe_read_kernel(&f, sizeof(f), &fds[fd]) || !f)
		return 0;
	struct inode *inode = BPF_CORE_READ(f, f_inode);

	if ((BPF_CORE_READ(inode, i_mode) & S_IFMT) != S_IFSOCK)
		return 0;
	return BPF_CORE_READ(inode, i_ino);
}

/* Runs on every read and close of every process: plain loads through the
 * task's BTF pointer rather than helper calls (see common.bpf.h). */
static __always_inline bool runs_hooked_exe(void)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct mm_struct *mm = task->mm;

	if (!mm)
		return false; /* a kernel thread */
	struct file *exe = mm->exe_file;

	if (!exe)
		return false;
	__u64 ino = exe->f_inode->i_ino;

	return bpf_map_lookup_elem(&aead_exes, &ino) != NULL;
}

/* A socket read by a thread of a hooked program: where its next keys and
 * records belong. */
static __always_inline int socket_read(__u64 fd)
{
	if (!runs_hooked_exe() || !task_wanted())
		return 0;
	__u64 ino = socket_inode(fd);

	if (!ino)
		return 0;
	struct aead_thread *t = thread_state(true);

	if (t)
		t->recv_socket = ino;
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_read")
int aead_read(struct trace_event_raw_sys_enter *ctx) { return socket_read(ctx->args[0]); }
SEC("tracepoint/syscalls/sys_enter_readv")
int aead_readv(struct trace_event_raw_sys_enter *ctx) { return socket_read(ctx->args[0]); }
SEC("tracepoint/syscalls/sys_enter_recvfrom")
int aead_recvfrom(struct trace_event_raw_sys_enter *ctx) { return socket_read(ctx->args[0]); }
SEC("tracepoint/syscalls/sys_enter_recvmsg")
int aead_recvmsg(struct trace_event_raw_sys_enter *ctx) { return socket_read(ctx->args[0]); }

static long forget_key(struct bpf_map *map, struct key_id *key, __u64 *ino, __u64 *closed)
{
	if (*ino == *closed)
		bpf_map_delete_elem(map, key);
	return 0;
}

/* A socket of a hooked program is closed: its connection has ended, and
 * the memory of its keys may hold another connection's next. */
SEC("tracepoint/syscalls/sys_enter_close")
int aead_close(struct trace_event_raw_sys_enter *ctx)
{
	if (!runs_hooked_exe() || !task_wanted())
		return 0;
	__u64 ino = socket_inode(ctx->args[0]);

	if (!ino)
		return 0;
	session_end(FN_SOCKET_CLOSE, ino, bpf_get_current_pid_tgid() >> 32);
	bpf_for_each_map_elem(&aead_keys, forget_key, &ino, 0);
	return 0;
}

/* The connection of the key ctx: the socket it was tied to, or else the
 * socket its thread last read from, to which it is tied now. */
static __always_inline struct conn *key_conn(__u64 ctx, __u32 tgid)
{
	struct key_id key = { .ctx = ctx, .tgid = tgid };
	__u64 *ino = bpf_map_lookup_elem(&aead_keys, &key);

	if (ino)
		return conn_of(*ino, tgid);
	struct aead_thread *t = thread_state(false);

	if (!t)
		return NULL;
	__u64 socket = t->init_socket ? t->init_socket : t->recv_socket;

	if (!socket)
		return NULL;
	bpf_map_update_elem(&aead_keys, &key, &socket, BPF_ANY);
	return conn_of(socket, tgid);
}

/* A new key at ctx (its memory may have held another connection's key). */
static __always_inline int key_init(__u64 ctx)
{
	struct key_id key = { .ctx = ctx, .tgid = bpf_get_current_pid_tgid() >> 32 };
	struct aead_thread *t = thread_state(false);

	if (t && t->recv_socket)
		bpf_map_update_elem(&aead_keys, &key, &t->recv_socket, BPF_ANY);
	else
		bpf_map_delete_elem(&aead_keys, &key);
	return 0;
}

/* The plaintext's length and record type: TLS 1.2 names the type in the
 * additional data, TLS 1.3 puts it after the content, before any zero
 * padding. Returns false when the record is not TLS or its type was not
 * found within TAIL bytes. */
static __always_inline bool record_type(__u64 buf, __u64 len, __u32 ad_len, __u8 ad_type,
					__u64 *content_len, __u8 *type)
{
	if (ad_len == TLS12_AD_LEN) {
		*content_len = len;
		*type = ad_type;
		return true;
	}
	if (ad_len != TLS13_AD_LEN || !len)
		return false;
	__u8 tail[TAIL] = {};
	__u32 n = len < TAIL ? len : TAIL;

	/* The same value, in a form the verifier can bound: 1..TAIL. */
	n = ((n - 1) & (TAIL - 1)) + 1;
	if (bpf_probe_read_user(tail, n, (void *)(buf + len - n)))
		return false;
	for (int i = TAIL - 1; i >= 0; i--) {
		if (i >= n || !tail[i])
			continue;
		*type = tail[i];
		*content_len = len - n + i;
		return true;
	}
	stat_add(STAT_UNMATCHED, 1);
	return false;
}

/* TLS 1.2's additional data: seq_num(8) type(1) version(2) length(2). */
static __always_inline __u8 tls12_type(__u64 ad, __u32 ad_len)
{
	__u8 type = 0;

	if (ad_len == TLS12_AD_LEN)
		bpf_probe_read_user(&type, 1, (void *)(ad + 8));
	return type;
}

struct record {
	__u64 key;      /* the AEAD key: EVP_AEAD_CTX *, or ring's key */
	__u64 buf;      /* the plaintext, content type and padding included */
	__u64 len;
	__u64 start_ns; /* when the call began, for opens */
	__u32 fn;
	__u32 dir;
	__u32 ad_len;
	__u32 ad_type;  /* TLS 1.2: the type named in the additional data */
};

/* A global function, verified once rather than at each of its callers. */
__noinline int report(struct record *r)
{
	__u64 content_len;
	__u8 type;

	if (!r || (r->ad_len != TLS12_AD_LEN && r->ad_len != TLS13_AD_LEN))
		return 0; /* not a TLS record (QUIC, tickets) */
	/* Tied at its first record of any type: a handshake record may be the
	 * first its key seals. */
	struct conn *cn = key_conn(r->key, bpf_get_current_pid_tgid() >> 32);

	if (!record_type(r->buf, r->len, r->ad_len, r->ad_type, &content_len, &type) ||
	    type != CONTENT_APPLICATION_DATA || !content_len)
		return 0;
	if (!cn) {
		stat_add(STAT_UNMATCHED, 1);
		return 0;
	}
	emit_call(cn->id, cn, r->fn, r->dir, r->buf, content_len, content_len, r->start_ns);
	return 0;
}

static __always_inline void open_enter(__u64 ctx, __u64 out, __u64 out_len_ptr, __u64 len, __u64 ad,
				       __u64 ad_len, __u8 fn)
{
	struct aead_thread *t = thread_state(true);

	if (!t) {
		stat_add(STAT_CALLS_MISSED, 1);
		return;
	}
	t->open_ctx = ctx;
	t->open_out = out;
	t->open_out_len = out_len_ptr;
	t->open_len = len;
	t->open_start_ns = bpf_ktime_get_ns();
	t->open_ad_len = ad_len;
	t->open_type = tls12_type(ad, ad_len);
	t->open_fn = fn;
	t->open_active = 1;
}

/* The stack arguments, from the first one on the stack (the seventh). */
struct stack_args {
	__u64 ret_addr;
	__u64 arg[7];
};

SEC("uprobe")
int aead_enter(struct pt_regs *ctx)
{
	__u32 fn = bpf_get_attach_cookie(ctx);

	if (!task_wanted())
		return 0;
	if (fn == FN_AEAD_INIT || fn == FN_AEAD_INIT_WITH_DIRECTION)
		return key_init(PT_REGS_PARM1(ctx));
	if (fn == FN_RING_AES_GCM_INIT_128 || fn == FN_RING_AES_GCM_INIT_256 || fn == FN_RING_CHACHA_INIT) {
		struct aead_thread *t = thread_state(false);

		if (t)
			t->init_socket = t->recv_socket;
		return 0;
	}
	struct stack_args s;

	if (bpf_probe_read_user(&s, sizeof(s), (void *)PT_REGS_SP(ctx))) {
		stat_add(STAT_READ_FAULT, 1);
		return 0;
	}
	if (fn == FN_AEAD_SEAL) {
		/* (ctx, out, out_len, max_out_len, nonce, nonce_len, in, in_len, ad, ad_len) */
		struct record r = { .key = PT_REGS_PARM1(ctx), .buf = s.arg[0], .len = s.arg[1], .fn = fn,
				    .dir = DIR_SEND, .ad_len = s.arg[3], .ad_type = tls12_type(s.arg[2], s.arg[3]) };

		report(&r);
	} else if (fn == FN_AEAD_SEAL_SCATTER) {
		/* (ctx, out, out_tag, out_tag_len, max_out_tag_len, nonce, nonce_len,
		 *  in, in_len, extra_in, extra_in_len, ad, ad_len) */
		struct record r = { .key = PT_REGS_PARM1(ctx), .buf = s.arg[1], .len = s.arg[2], .fn = fn,
				    .dir = DIR_SEND, .ad_len = s.arg[6], .ad_type = tls12_type(s.arg[5], s.arg[6]) };

		report(&r);
	} else if (fn == FN_AEAD_OPEN) {
		/* (ctx, out, out_len, max_out_len, nonce, nonce_len, in, in_len, ad, ad_len) */
		open_enter(PT_REGS_PARM1(ctx), PT_REGS_PARM2(ctx), PT_REGS_PARM3(ctx), 0, s.arg[2], s.arg[3], fn);
	} else if (fn == FN_RING_AES_GCM_SEAL || fn == FN_RING_CHACHA_SEAL) {
		/* (result, key, nonce, ad, ad_len, in_out, in_out_len) */
		__u64 ad = PT_REGS_PARM4(ctx), ad_len = PT_REGS_PARM5(ctx);
		/* in_out is the sixth argument: libbpf 1.1 has no PT_REGS_PARM6 */
		struct record r = { .key = PT_REGS_PARM2(ctx), .buf = ctx->r9, .len = s.arg[0], .fn = fn,
				    .dir = DIR_SEND, .ad_len = ad_len, .ad_type = tls12_type(ad, ad_len) };

		report(&r);
	} else if (fn == FN_RING_AES_GCM_OPEN || fn == FN_RING_CHACHA_OPEN) {
		/* (result, key, nonce, ad, ad_len, in_out, in_out_len, ciphertext start):
		 * the plaintext is moved to the front of in_out. */
		__u64 len = s.arg[0] > s.arg[1] ? s.arg[0] - s.arg[1] : 0;

		open_enter(PT_REGS_PARM2(ctx), ctx->r9, 0, len, PT_REGS_PARM4(ctx), PT_REGS_PARM5(ctx), fn);
	}
	return 0;
}

SEC("uretprobe")
int aead_open_return(struct pt_regs *ctx)
{
	struct aead_thread *t = thread_state(false);

	if (!t || !t->open_active)
		return 0;
	t->open_active = 0;
	__u64 len = t->open_len;

	if (t->open_out_len) {
		/* aws-lc returns 1 on success; on failure the output was wiped. */
		if ((int)PT_REGS_RC(ctx) != 1)
			return 0;
		if (bpf_probe_read_user(&len, sizeof(len), (void *)t->open_out_len))
			return 0;
	}
	struct record r = { .key = t->open_ctx, .buf = t->open_out, .len = len, .start_ns = t->open_start_ns,
			    .fn = t->open_fn, .dir = DIR_RECV, .ad_len = t->open_ad_len, .ad_type = t->open_type };

	report(&r);
	return 0;
}
