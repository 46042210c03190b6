// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* Process lifecycle, file activity and outbound connections. Lifecycle uses
 * BTF-typed raw tracepoints, which need no tracefs; syscalls without a raw
 * tracepoint of their own use the syscall tracepoints. Paths are resolved
 * here, while the files and working directories still exist. */
#include "common.bpf.h"

#define AT_FDCWD -100
#define AF_INET 2
#define AF_INET6 10
#define AT_REMOVEDIR 0x200

union scratch_record {
	struct exec_event exec;
	struct open_event open;
	struct file_event file;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, union scratch_record);
} scratch SEC(".maps");

/* --- Resolving a path from its dentry, across mounts --- */

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, char[PATH_RESOLVED_BUF]);
} path_scratch SEC(".maps");

struct walk {
	struct dentry *dentry;
	struct mount *mnt;
	__u32 len;
	__u32 complete; /* reached the root */
};

static long walk_step(__u32 i, struct walk *w)
{
	__u32 zero = 0;
	char *buf = bpf_map_lookup_elem(&path_scratch, &zero);

	if (!buf)
		return 1;
	struct dentry *d = w->dentry;
	struct mount *m = w->mnt;

	if (d == BPF_CORE_READ(m, mnt.mnt_root)) {
		struct mount *parent = BPF_CORE_READ(m, mnt_parent);

		if (parent == m) {
			w->complete = 1;
			return 1;
		}
		w->dentry = BPF_CORE_READ(m, mnt_mountpoint);
		w->mnt = parent;
		return 0;
	}
	struct dentry *up = BPF_CORE_READ(d, d_parent);

	if (up == d) {
		w->complete = 1;
		return 1;
	}
	if (w->len >= PATH_WALK_MAX)
		return 1;
	long n = bpf_probe_read_kernel_str(buf + (w->len & (PATH_WALK_MAX - 1)), 256, BPF_CORE_READ(d, d_name.name));

	if (n > 0)
		w->len += n;
	w->dentry = up;
	return 0;
}

static __always_inline struct mount *real_mount(struct vfsmount *vfsmnt)
{
	return (struct mount *)((void *)vfsmnt - bpf_core_field_offset(struct mount, mnt));
}

/* Copies the path of (dentry, mnt) into dst as components, leaf first;
 * returns their length; *truncated is set when the root was not reached. */
static __always_inline __u32 resolve(struct dentry *dentry, struct vfsmount *vfsmnt, char *dst, __u32 *truncated)
{
	struct walk w = { .dentry = dentry, .mnt = real_mount(vfsmnt) };
	__u32 zero = 0;

	*truncated = 0;
	if (!dentry || !vfsmnt)
		return 0;
	bpf_loop(PATH_DEPTH_MAX, walk_step, &w, 0);
	char *buf = bpf_map_lookup_elem(&path_scratch, &zero);

	if (!buf)
		return 0;
	*truncated = !w.complete;
	__u32 len = w.len & (PATH_RESOLVED_BUF - 1);

	if (len && bpf_probe_read_kernel(dst, len, buf))
		return 0;
	return len;
}

static __always_inline __u32 resolve_cwd(char *dst, __u32 *truncated)
{
	struct task_struct *task = bpf_get_current_task_btf();

	return resolve(BPF_CORE_READ(task, fs, pwd.dentry), BPF_CORE_READ(task, fs, pwd.mnt), dst, truncated);
}

static __always_inline __u32 resolve_fd(int fd, char *dst, __u32 *truncated)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
	struct file **fds = BPF_CORE_READ(fdt, fd);
	struct file *file = NULL;

	*truncated = 0;
	if (fd < 0 || fd >= BPF_CORE_READ(fdt, max_fds))
		return 0;
	bpf_probe_read_kernel(&file, sizeof(file), &fds[fd]);
	if (!file)
		return 0;
	return resolve(BPF_CORE_READ(file, f_path.dentry), BPF_CORE_READ(file, f_path.mnt), dst, truncated);
}

/* The directory a path given to an *at() syscall is relative to. */
static __always_inline __u32 resolve_dir(int dfd, char *dst)
{
	__u32 truncated;

	return dfd == AT_FDCWD ? resolve_cwd(dst, &truncated) : resolve_fd(dfd, dst, &truncated);
}

/* --- Lifecycle --- */

SEC("tp_btf/sched_process_exec")
int BPF_PROG(handle_exec, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	if (cfg.follow && cfg.comm[0]) {
		/* Recording programs by name: this exec may start one. */
		char comm[TASK_COMM_LEN];
		__u32 tgid = bpf_get_current_pid_tgid() >> 32;
		__u8 one = 1;

		bpf_get_current_comm(comm, sizeof(comm));
		if (comm_is(comm))
			bpf_map_update_elem(&traced, &tgid, &one, BPF_ANY);
	}
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

	__u32 cwd_off = (name_len + args_len) & EXEC_TAIL_OFFSET_MASK;
	__u32 truncated;

	ev->cwd_len = resolve_cwd(ev->data + cwd_off, &truncated);
	ev->cwd_truncated = truncated;
	submit(ev, offsetof(struct exec_event, data) + cwd_off + (ev->cwd_len & (PATH_RESOLVED_BUF - 1)), 0);
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
	if (cfg.follow) {
		__u32 tgid = ev.hdr.pid;

		bpf_map_delete_elem(&traced, &tgid);
	}
	return 0;
}

SEC("tp_btf/sched_process_fork")
int BPF_PROG(handle_fork, struct task_struct *parent, struct task_struct *child)
{
	if (BPF_CORE_READ(child, pid) != BPF_CORE_READ(child, tgid))
		return 0; /* a new thread, not a process */
	__u32 child_tgid = BPF_CORE_READ(child, tgid);

	if (cfg.follow) {
		/* Following a tree: the parent's membership passes to the child,
		 * in the kernel, before the child can run. */
		if (!is_traced(BPF_CORE_READ(parent, tgid)))
			return 0;
		__u8 one = 1;

		bpf_map_update_elem(&traced, &child_tgid, &one, BPF_ANY);
	} else if (!task_wanted()) {
		return 0;
	}
	struct fork_event ev;

	fill_header(&ev.hdr, EVENT_FORK);
	ev.child_pid = child_tgid;
	ev.reserved = 0;
	submit(&ev, sizeof(ev), 0);
	return 0;
}

/* --- Syscalls: entry saves the arguments, exit reports with the result --- */

struct syscall_args {
	__u64 path;
	__u64 path2;
	__s32 dfd;
	__s32 dfd2;
	__s32 flags;
	__u32 op;
	__u8 sockaddr[28]; /* connect: sockaddr_in or sockaddr_in6 */
	__u32 active; /* entered, not returned yet */
};

/* The syscall under way on each thread, as ssl.bpf.c keeps its calls: task
 * storage is found from the task itself, without the hashing and bucket
 * lock of a map keyed by thread, and goes away with the thread. */
struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct syscall_args);
} pending SEC(".maps");

static __always_inline int save_args(struct syscall_args *args)
{
	if (!task_wanted())
		return 0;
	struct syscall_args *saved = bpf_task_storage_get(&pending, bpf_get_current_task_btf(), 0,
							  BPF_LOCAL_STORAGE_GET_F_CREATE);

	if (saved) {
		*saved = *args;
		saved->active = 1;
	}
	return 0;
}

/* The arguments its entry saved, once: NULL if it was not saved. */
static __always_inline struct syscall_args *take_args(void)
{
	struct syscall_args *saved = bpf_task_storage_get(&pending, bpf_get_current_task_btf(), 0, 0);

	if (!saved || !saved->active)
		return NULL;
	saved->active = 0;
	return saved;
}

static __always_inline int open_enter(int dfd, const char *path, __s32 flags)
{
	struct syscall_args args = { .path = (__u64)path, .dfd = dfd, .flags = flags };

	return save_args(&args);
}

static __always_inline int open_exit(long ret)
{
	struct syscall_args *args = take_args();

	if (!args)
		return 0;
	__u32 zero = 0;
	struct open_event *ev = bpf_map_lookup_elem(&scratch, &zero);

	if (!ev)
		return 0;
	fill_header(&ev->hdr, EVENT_OPEN);
	ev->ret = ret;
	ev->flags = args->flags;

	long n = bpf_probe_read_user_str(ev->data, PATH_MAX_LEN, (void *)args->path);
	__u32 len = n > 0 ? n - 1 : 0;

	len &= PATH_MAX_LEN - 1;
	ev->path_len = len;
	__u32 truncated = 0;

	ev->resolved_len = ret >= 0 ? resolve_fd(ret, ev->data + len, &truncated) : 0;
	ev->resolved_truncated = truncated;
	submit(ev, offsetof(struct open_event, data) + len + (ev->resolved_len & (PATH_RESOLVED_BUF - 1)), 0);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_openat")
int enter_openat(struct trace_event_raw_sys_enter *ctx)
{
	return open_enter(ctx->args[0], (const char *)ctx->args[1], (__s32)ctx->args[2]);
}

SEC("tracepoint/syscalls/sys_enter_open")
int enter_open(struct trace_event_raw_sys_enter *ctx)
{
	return open_enter(AT_FDCWD, (const char *)ctx->args[0], (__s32)ctx->args[1]);
}

SEC("tracepoint/syscalls/sys_enter_openat2")
int enter_openat2(struct trace_event_raw_sys_enter *ctx)
{
	struct open_how how = {};

	bpf_probe_read_user(&how, sizeof(how), (void *)ctx->args[2]);
	return open_enter(ctx->args[0], (const char *)ctx->args[1], (__s32)how.flags);
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

/* unlink, rmdir, rename: the paths as given and, for relative ones, the
 * directory they are relative to. */

static __always_inline int file_enter(__u32 op, int dfd, const char *path, int dfd2, const char *path2, __s32 flags)
{
	struct syscall_args args = {
		.op = op, .dfd = dfd, .path = (__u64)path, .dfd2 = dfd2, .path2 = (__u64)path2, .flags = flags,
	};

	return save_args(&args);
}

static __always_inline __u32 copy_path(char *dst, __u64 src)
{
	long n = bpf_probe_read_user_str(dst, PATH_MAX_LEN, (void *)src);

	return (n > 0 ? n - 1 : 0) & (PATH_MAX_LEN - 1);
}

static __always_inline int file_exit(long ret)
{
	struct syscall_args *args = take_args();

	if (!args)
		return 0;
	__u32 zero = 0;
	struct file_event *ev = bpf_map_lookup_elem(&scratch, &zero);

	if (!ev)
		return 0;
	fill_header(&ev->hdr, EVENT_FILE);
	ev->ret = ret;
	ev->op = args->op;
	ev->flags = args->flags;

	/* data: path, path2, dir, dir2 */
	__u32 off = 0;

	ev->path_len = copy_path(ev->data, args->path);
	off = ev->path_len;
	ev->path2_len = args->path2 ? copy_path(ev->data + off, args->path2) : 0;
	off = (off + ev->path2_len) & (2 * PATH_MAX_LEN - 1);

	char first = 0;

	bpf_probe_read_kernel(&first, 1, ev->data);
	ev->dir_len = ev->path_len && first != '/' ? resolve_dir(args->dfd, ev->data + off) : 0;
	off = (off + (ev->dir_len & (PATH_RESOLVED_BUF - 1))) & (FILE_DATA_BUF / 2 - 1);
	ev->dir2_len = 0;
	if (ev->path2_len) {
		bpf_probe_read_kernel(&first, 1, ev->data + ev->path_len);
		if (first != '/')
			ev->dir2_len = resolve_dir(args->dfd2, ev->data + off);
	}
	off += ev->dir2_len & (PATH_RESOLVED_BUF - 1);
	submit(ev, offsetof(struct file_event, data) + (off & (FILE_DATA_BUF - 1)), 0);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_unlinkat")
int enter_unlinkat(struct trace_event_raw_sys_enter *ctx)
{
	__s32 flags = ctx->args[2];

	return file_enter(flags & AT_REMOVEDIR ? FILE_RMDIR : FILE_UNLINK, ctx->args[0],
			  (const char *)ctx->args[1], 0, NULL, flags);
}

SEC("tracepoint/syscalls/sys_enter_unlink")
int enter_unlink(struct trace_event_raw_sys_enter *ctx)
{
	return file_enter(FILE_UNLINK, AT_FDCWD, (const char *)ctx->args[0], 0, NULL, 0);
}

SEC("tracepoint/syscalls/sys_enter_rmdir")
int enter_rmdir(struct trace_event_raw_sys_enter *ctx)
{
	return file_enter(FILE_RMDIR, AT_FDCWD, (const char *)ctx->args[0], 0, NULL, 0);
}

SEC("tracepoint/syscalls/sys_enter_rename")
int enter_rename(struct trace_event_raw_sys_enter *ctx)
{
	return file_enter(FILE_RENAME, AT_FDCWD, (const char *)ctx->args[0], AT_FDCWD, (const char *)ctx->args[1], 0);
}

SEC("tracepoint/syscalls/sys_enter_renameat")
int enter_renameat(struct trace_event_raw_sys_enter *ctx)
{
	return file_enter(FILE_RENAME, ctx->args[0], (const char *)ctx->args[1], ctx->args[2],
			  (const char *)ctx->args[3], 0);
}

SEC("tracepoint/syscalls/sys_enter_renameat2")
int enter_renameat2(struct trace_event_raw_sys_enter *ctx)
{
	return file_enter(FILE_RENAME, ctx->args[0], (const char *)ctx->args[1], ctx->args[2],
			  (const char *)ctx->args[3], ctx->args[4]);
}

SEC("tracepoint/syscalls/sys_exit_unlinkat")
int exit_unlinkat(struct trace_event_raw_sys_exit *ctx)
{
	return file_exit(ctx->ret);
}

SEC("tracepoint/syscalls/sys_exit_unlink")
int exit_unlink(struct trace_event_raw_sys_exit *ctx)
{
	return file_exit(ctx->ret);
}

SEC("tracepoint/syscalls/sys_exit_rmdir")
int exit_rmdir(struct trace_event_raw_sys_exit *ctx)
{
	return file_exit(ctx->ret);
}

SEC("tracepoint/syscalls/sys_exit_rename")
int exit_rename(struct trace_event_raw_sys_exit *ctx)
{
	return file_exit(ctx->ret);
}

SEC("tracepoint/syscalls/sys_exit_renameat")
int exit_renameat(struct trace_event_raw_sys_exit *ctx)
{
	return file_exit(ctx->ret);
}

SEC("tracepoint/syscalls/sys_exit_renameat2")
int exit_renameat2(struct trace_event_raw_sys_exit *ctx)
{
	return file_exit(ctx->ret);
}

/* --- Outbound connections --- */

SEC("tracepoint/syscalls/sys_enter_connect")
int enter_connect(struct trace_event_raw_sys_enter *ctx)
{
	struct syscall_args args = {};
	__u32 addrlen = ctx->args[2];

	if (addrlen > sizeof(args.sockaddr))
		addrlen = sizeof(args.sockaddr);
	if (bpf_probe_read_user(args.sockaddr, addrlen & 31, (void *)ctx->args[1]))
		return 0;
	__u16 family = *(__u16 *)args.sockaddr;

	if (family != AF_INET && family != AF_INET6)
		return 0;
	return save_args(&args);
}

SEC("tracepoint/syscalls/sys_exit_connect")
int exit_connect(struct trace_event_raw_sys_exit *ctx)
{
	struct syscall_args *args = take_args();

	if (!args)
		return 0;
	struct connect_event ev = {};

	fill_header(&ev.hdr, EVENT_CONNECT);
	ev.ret = ctx->ret;
	ev.family = *(__u16 *)args->sockaddr;
	ev.port = __builtin_bswap16(*(__u16 *)(args->sockaddr + 2));
	if (ev.family == AF_INET)
		__builtin_memcpy(ev.addr, args->sockaddr + 4, 4);
	else
		__builtin_memcpy(ev.addr, args->sockaddr + 8, 16);
	submit(&ev, sizeof(ev), 0);
	return 0;
}
