/* The LTTng-UST tracepoint the floor benchmark's baseline fires (bench/lttng_writer.c): one
 * 64-byte payload, as a fixed array of char (lttng_ust_field_array, ctf_array in the pre-2.13
 * names), so the tracer copies the same 64 bytes relay_write copies. */
#undef LTTNG_UST_TRACEPOINT_PROVIDER
#define LTTNG_UST_TRACEPOINT_PROVIDER relayfs_bench
#undef LTTNG_UST_TRACEPOINT_INCLUDE
#define LTTNG_UST_TRACEPOINT_INCLUDE "./lttng_tp.h"

#if !defined(RELAYFS_BENCH_LTTNG_TP_H) || defined(LTTNG_UST_TRACEPOINT_HEADER_MULTI_READ)
#define RELAYFS_BENCH_LTTNG_TP_H

#include <lttng/tracepoint.h>

LTTNG_UST_TRACEPOINT_EVENT(relayfs_bench, record64, LTTNG_UST_TP_ARGS(const char*, payload),
                           LTTNG_UST_TP_FIELDS(lttng_ust_field_array(char, payload, payload, 64)))

#endif

#include <lttng/tracepoint-event.h>
