// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* TLS plaintext of Go programs: crypto/tls.(*Conn).Write, Read and Close.
 *
 * Go (1.17 and later, ABIInternal) passes the receiver and arguments in
 * rax, rbx, rcx, ... and returns results in rax, rbx, ...; r14 holds the
 * running goroutine (g). A uretprobe would replace the return address on
 * the goroutine's stack, which Go copies elsewhere when it grows, so the
 * result is read instead by uprobes on each return instruction of the
 * function, found by disassembly in user space. A goroutine may move
 * between threads while it waits inside Read, so the call under way is
 * keyed by g, not by thread. */
#define CONN_ID_BASE CONN_ID_BASE_GO
#include "tls_calls.bpf.h"

struct go_call_key {
	__u64 g;
	__u32 tgid;
	__u32 reserved;
};

struct go_call {
	__u64 conn;    /* *tls.Conn */
	__u64 conn_id; /* its id when the call began: Close may end it meanwhile */
	__u64 buf;
	__u64 start_ns;
	__u32 fn;
	__u32 reserved;
};

/* LRU: a goroutine that panics out of Read never reaches a return, and its
 * entry must not stay forever. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct go_call_key);
	__type(value, struct go_call);
} go_calls SEC(".maps");

/* The attach cookie says which function this is (enum ssl_fn). */
SEC("uprobe")
int go_tls_enter(struct pt_regs *ctx)
{
	__u32 fn = bpf_get_attach_cookie(ctx);

	if (!task_wanted())
		return 0;
	struct go_call_key key = { .g = ctx->r14, .tgid = bpf_get_current_pid_tgid() >> 32 };

	if (fn == FN_GO_TLS_CLOSE) {
		session_end(fn, ctx->ax, key.tgid);
		return 0;
	}
	struct go_call *entered = bpf_map_lookup_elem(&go_calls, &key);

	/* Entered again after growing its stack (the prologue calls morestack,
	 * which jumps back to the first instruction): the same call. */
	if (entered && entered->fn == fn && entered->conn == ctx->ax)
		return 0;
	struct conn *cn = conn_of(ctx->ax, key.tgid);
	struct go_call call = { .conn = ctx->ax, .conn_id = cn ? cn->id : 0, .buf = ctx->bx,
				.start_ns = bpf_ktime_get_ns(), .fn = fn };

	if (bpf_map_update_elem(&go_calls, &key, &call, BPF_ANY)) {
		stat_add(STAT_CALLS_MISSED, 1);
		return 0;
	}
	if (cn)
		__sync_fetch_and_add(&cn->inflight, 1);
	return 0;
}

/* On every return instruction of Write and Read: n is in rax. */
SEC("uprobe")
int go_tls_return(struct pt_regs *ctx)
{
	struct go_call_key key = { .g = ctx->r14, .tgid = bpf_get_current_pid_tgid() >> 32 };
	struct go_call *pending = bpf_map_lookup_elem(&go_calls, &key);

	if (!pending)
		return 0;
	struct go_call c = *pending;

	/* A return of another function than the one entered: the entered one
	 * left by a panic, and this goroutine's g was found again. */
	if (c.fn != bpf_get_attach_cookie(ctx))
		return 0;
	bpf_map_delete_elem(&go_calls, &key);
	struct conn_key ck = { .session = c.conn, .tgid = key.tgid };
	struct conn *cn = bpf_map_lookup_elem(&conns, &ck);

	if (cn && cn->id != c.conn_id)
		cn = NULL; /* ended, and another connection at the same address */
	long n = (long)ctx->ax;

	/* Nothing moved (errors, deadlines): not data. */
	if (n > 0)
		emit_call(c.conn_id, cn, c.fn, c.fn == FN_GO_TLS_WRITE ? DIR_SEND : DIR_RECV, c.buf, n, n,
			  c.start_ns);
	if (cn)
		call_done(cn, c.conn, key.tgid);
	return 0;
}
