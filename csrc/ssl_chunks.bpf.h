/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* One call's captured plaintext as ssl_event records of at most SSL_CHUNK
 * bytes each, written through the `scratch` record of whoever includes
 * this (defined before the include). */
#ifndef AGENTSIGHT_SSL_CHUNKS_BPF_H
#define AGENTSIGHT_SSL_CHUNKS_BPF_H

struct chunk_ctx {
	__u64 buf;
	__u32 captured;
	__u32 sent;
	bool failed;
};

static __always_inline long emit_chunk_at(__u32 i, struct chunk_ctx *cc)
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

static long emit_chunk(__u32 i, struct chunk_ctx *cc)
{
	return emit_chunk_at(i, cc);
}

#endif
