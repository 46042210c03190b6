/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* What every agentsight BPF object has: its settings, a ring buffer, loss
 * counters, the filters and the record submission with deferred wake-ups. */
#ifndef AGENTSIGHT_COMMON_BPF_H
#define AGENTSIGHT_COMMON_BPF_H

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "events.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

const volatile struct config cfg = {};

/* User space sets the real size before load. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 16 << 20);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

static __always_inline void stat_add(__u32 index, __u64 n)
{
	__u64 *v = bpf_map_lookup_elem(&stats, &index);

	if (v)
		*v += n;
}

/* Processes being recorded, when following a process tree (cfg.follow).
 * Shared by the objects of one run: user space hands one map to all. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32); /* tgid */
	__type(value, __u8);
} traced SEC(".maps");

static __always_inline bool is_traced(__u32 tgid)
{
	return bpf_map_lookup_elem(&traced, &tgid) != NULL;
}

static __always_inline bool comm_is(const char *comm)
{
	for (int i = 0; i < TASK_COMM_LEN; i++) {
		if (comm[i] != cfg.comm[i])
			return false;
		if (!comm[i])
			break;
	}
	return true;
}

/* The current task's fields are read through its BTF pointer: plain loads
 * instead of helper calls, which cost tens of ns each on kernels with
 * return-thunk mitigations, and run on every probed TLS call. */
static __always_inline bool task_wanted(void)
{
	struct task_struct *task = bpf_get_current_task_btf();
	__u32 tgid = task->tgid;

	/* Its own file and library accesses would otherwise feed back on
	 * themselves (each open of a TLS library noticed and opened again). */
	if (tgid == cfg.self_tgid)
		return false;
	if (cfg.follow)
		return is_traced(tgid);
	if (cfg.tgid && tgid != cfg.tgid)
		return false;
	if (cfg.filter_uid && (__u32)bpf_get_current_uid_gid() != cfg.uid)
		return false;
	if (cfg.comm[0])
		return comm_is(task->comm);
	return true;
}

static __always_inline void fill_header(struct event_header *hdr, __u16 kind)
{
	struct task_struct *task = bpf_get_current_task_btf();

	hdr->ts_ns = bpf_ktime_get_ns();
	hdr->pid = task->tgid;
	hdr->tid = task->pid;
	hdr->uid = task->cred->uid.val;
	hdr->kind = kind;
	hdr->reserved = 0;
	__builtin_memcpy(hdr->comm, task->comm, sizeof(hdr->comm));
}

/* Waking the consumer costs the traced call about 2 us (an interrupt raised
 * on its own CPU; on a VM, an exit). It is woken each time the pending data
 * crosses a multiple of wakeup_bytes, and otherwise drains the ring on its
 * own short timer. Not for every record above the mark: while the consumer
 * catches up, records keep coming, and each would pay. A crossing that two
 * producers both miss is made up at the next multiple. wakeup_bytes 0: every
 * record wakes it. */
/* lost_bytes: data bytes counted as lost if the record does not fit. */
static __always_inline long submit(void *record, __u64 size, __u64 lost_bytes)
{
	__u64 pending = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA);
	__u64 step = cfg.wakeup_bytes;
	__u64 flags = !step || pending / step != (pending + size) / step ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP;
	long err = bpf_ringbuf_output(&events, record, size, flags);

	if (err) {
		stat_add(STAT_RING_FULL, 1);
		stat_add(STAT_RING_FULL_BYTES, lost_bytes);
	}
	return err;
}

#endif
