// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* Process lifecycle and file opens. Lifecycle uses BTF-typed raw
 * tracepoints, which need no tracefs; the open syscalls have no raw
 * tracepoint of their own, so they use the syscall tracepoints. */
#include "common.bpf.h"

union scratch_record {
	struct exec_event exec;
	struct open_event open;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, union scratch_record);
} scratch SEC(".maps");

struct open_call {
	__u64 path;
	__s32 flags;
	__u32 reserved;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64); /* pid_tgid */
	__type(value, struct open_call);
} open_calls SEC(".maps");

SEC("tp_btf/sched_process_exec")
int BPF_PROG(handle_exec, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	if (!task_wanted())
		return 0;
	__u32 zero = 0;
	struct exec_event *ev = bpf_map_lookup_elem(&scratch, &zero);

	if (!ev)
		return 0;
	fill_header(&ev->hdr, EVENT_EXEC);
	ev->ppid = BPF_CORE_READ(p, real_parent, tgid);

	long n = bpf_probe_read_kernel_str(ev->data, FILENAME_MAX_LEN, BPF_CORE_READ(bprm, filename));
	__u32 name_len = n > 0 ? n - 1 : 0; /* without the NUL */

	name_len &= FILENAME_MAX_LEN - 1;
	ev->filename_len = name_len;

	__u64 arg_start = BPF_CORE_READ(p, mm, arg_start);
	__u64 arg_end = BPF_CORE_READ(p, mm, arg_end);
	__u64 args_len = arg_end > arg_start ? arg_end - arg_start : 0;

	ev->args_truncated = args_len > ARGS_MAX;
	if (args_len > ARGS_MAX)
		args_len = ARGS_MAX;
	if (args_len && bpf_probe_read_user(ev->data + name_len, args_len, (void *)arg_start)) {
		stat_add(STAT_READ_FAULT, 1);
		args_len = 0;
	}
	ev->args_len = args_len;
	submit(ev, offsetof(struct exec_event, data) + name_len + args_len, 0);
	return 0;
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(handle_exit, struct task_struct *p)
{
	/* Threads leave before the process does; report the last one out,
	 * which found the live count at zero. */
	if (BPF_CORE_READ(p, signal, live.counter) != 0)
		return 0;
	if (!task_wanted())
		return 0;
	struct exit_event ev;

	fill_header(&ev.hdr, EVENT_EXIT);
	ev.duration_ns = ev.hdr.ts_ns - BPF_CORE_READ(p, start_time);
	ev.exit_code = BPF_CORE_READ(p, exit_code);
	ev.ppid = BPF_CORE_READ(p, real_parent, tgid);
	submit(&ev, sizeof(ev), 0);
	return 0;
}

SEC("tp_btf/sched_process_fork")
int BPF_PROG(handle_fork, struct task_struct *parent, struct task_struct *child)
{
	if (BPF_CORE_READ(child, pid) != BPF_CORE_READ(child, tgid))
		return 0; /* a new thread, not a process */
	if (!task_wanted())
		return 0;
	struct fork_event ev;

	fill_header(&ev.hdr, EVENT_FORK);
	ev.child_pid = BPF_CORE_READ(child, tgid);
	ev.reserved = 0;
	submit(&ev, sizeof(ev), 0);
	return 0;
}

static __always_inline int open_enter(const char *path, __s32 flags)
{
	if (!task_wanted())
		return 0;
	__u64 id = bpf_get_current_pid_tgid();
	struct open_call call = { .path = (__u64)path, .flags = flags };

	bpf_map_update_elem(&open_calls, &id, &call, BPF_ANY);
	return 0;
}

static __always_inline int open_exit(long ret)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct open_call *call = bpf_map_lookup_elem(&open_calls, &id);

	if (!call)
		return 0;
	__u32 zero = 0;
	struct open_event *ev = bpf_map_lookup_elem(&scratch, &zero);

	if (!ev)
		goto out;
	fill_header(&ev->hdr, EVENT_OPEN);
	ev->ret = ret;
	ev->flags = call->flags;

	long n = bpf_probe_read_user_str(ev->path, PATH_MAX_LEN, (void *)call->path);
	__u32 len = n > 0 ? n - 1 : 0;

	len &= PATH_MAX_LEN - 1;
	ev->path_len = len;
	submit(ev, offsetof(struct open_event, path) + len, 0);
out:
	bpf_map_delete_elem(&open_calls, &id);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_openat")
int enter_openat(struct trace_event_raw_sys_enter *ctx)
{
	return open_enter((const char *)ctx->args[1], (__s32)ctx->args[2]);
}

SEC("tracepoint/syscalls/sys_enter_open")
int enter_open(struct trace_event_raw_sys_enter *ctx)
{
	return open_enter((const char *)ctx->args[0], (__s32)ctx->args[1]);
}

SEC("tracepoint/syscalls/sys_enter_openat2")
int enter_openat2(struct trace_event_raw_sys_enter *ctx)
{
	struct open_how how = {};

	bpf_probe_read_user(&how, sizeof(how), (void *)ctx->args[2]);
	return open_enter((const char *)ctx->args[1], (__s32)how.flags);
}

SEC("tracepoint/syscalls/sys_exit_openat")
int exit_openat(struct trace_event_raw_sys_exit *ctx)
{
	return open_exit(ctx->ret);
}

SEC("tracepoint/syscalls/sys_exit_open")
int exit_open(struct trace_event_raw_sys_exit *ctx)
{
	return open_exit(ctx->ret);
}

SEC("tracepoint/syscalls/sys_exit_openat2")
int exit_openat2(struct trace_event_raw_sys_exit *ctx)
{
	return open_exit(ctx->ret);
}
