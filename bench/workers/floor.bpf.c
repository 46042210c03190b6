// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* The floor of any uprobe capture: an entry probe and a return probe that
 * do nothing, attached where agentsight attaches its own. What a round trip
 * costs with these is what the traps alone cost. */
#include "common.bpf.h"

SEC("uprobe")
int floor_enter(struct pt_regs *ctx)
{
	return 0;
}

SEC("uretprobe")
int floor_return(struct pt_regs *ctx)
{
	return 0;
}
