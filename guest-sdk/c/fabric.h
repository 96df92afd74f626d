/*
 * The Fabric guest SDK for C (ABI version 1; the calls are described in host/abi.ts).
 *
 *   #include <stdio.h>
 *   #include "fabric.h"
 *
 *   FABRIC_THREAD(worker) {
 *     char name[32];
 *     size_t length = fabric_thread_arg(name, sizeof name - 1);
 *     name[length < sizeof name ? length : 0] = 0;
 *     printf("hello from %s\n", name);
 *     fabric_set_result("done", 4);
 *   }
 *
 *   int main(int argc, char **argv) {
 *     fabric_thread thread = fabric_spawn("worker", "thread 1", 8);
 *     char result[16];
 *     int length = fabric_join(thread, result, sizeof result);
 *     printf("%.*s\n", length, result);
 *     return 0;
 *   }
 *
 * Build with `npx fabric build prog.c` (clang --target=wasm32-wasi, this directory on the include
 * path) and run with `npx fabric run prog.wasm -- args`. Printing, arguments, files and exit are
 * plain libc: printf, main(argc, argv), fopen, exit().
 *
 * A thread is a new instance of the same module, started at the export that FABRIC_THREAD defines
 * (not at `_start`), with nothing shared but what the system shares. The linker (lld) wraps every
 * export of a WASI command so that it runs the constructors first (libc's preopened directories
 * among them) and the destructors last (libc flushes stdio there), so stdio and fopen work in a
 * thread as they do in main.
 *
 * Compiled natively (any target but wasm), the same program runs as one ordinary process: spawn runs
 * the thread entry at once and to its end, join hands back its result, checkpoint and yield do
 * nothing. That keeps one source for comparing wasm against native code.
 */

#ifndef FABRIC_H
#define FABRIC_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define FABRIC_ABI_VERSION 1

/* A spawned thread (> 0), or a negative error from fabric_spawn. */
typedef int32_t fabric_thread;

/* Errors that fabric_spawn and fabric_join return (negative). */
#define FABRIC_SPAWN_TOO_MANY_THREADS (-1)
#define FABRIC_SPAWN_NO_SUCH_ENTRY (-2)
#define FABRIC_JOIN_NO_SUCH_THREAD (-1)
#define FABRIC_JOIN_THREAD_FAILED (-3)

#ifdef __wasm__

#define FABRIC_IMPORT(name) __attribute__((import_module("fabric"), import_name(#name)))

FABRIC_IMPORT(spawn)
int32_t fabric_import_spawn(const char *entry, size_t entry_length, const void *arg, size_t arg_length);
FABRIC_IMPORT(join) int32_t fabric_import_join(fabric_thread thread, void *out, size_t capacity);
FABRIC_IMPORT(checkpoint) void fabric_import_checkpoint(void);
FABRIC_IMPORT(yield) void fabric_import_yield(void);
FABRIC_IMPORT(arg_length) size_t fabric_import_arg_length(void);
FABRIC_IMPORT(arg_read) void fabric_import_arg_read(void *out);
FABRIC_IMPORT(set_result) void fabric_import_set_result(const void *result, size_t length);
FABRIC_IMPORT(thread_id) int32_t fabric_import_thread_id(void);

/*
 * Defines a thread entry: `FABRIC_THREAD(worker) { ... }` exports `worker`, which fabric_spawn
 * names. The entry takes no parameters; it reads its argument with fabric_thread_arg and hands
 * back bytes with fabric_set_result. Returning ends the thread (stdout is flushed then).
 */
#define FABRIC_THREAD(name) __attribute__((export_name(#name))) void name(void)

/* Starts a thread at the entry `entry` (a FABRIC_THREAD) with a copy of `length` bytes at `arg`. */
static inline fabric_thread fabric_spawn(const char *entry, const void *arg, size_t length) {
  return fabric_import_spawn(entry, __builtin_strlen(entry), arg, length);
}

/*
 * Waits for `thread` to end and copies at most `capacity` bytes of its result to `out`. Returns the
 * result's whole length (call again with a larger buffer when it exceeds `capacity`), or a
 * negative error when the thread does not exist or failed.
 */
static inline int32_t fabric_join(fabric_thread thread, void *out, size_t capacity) {
  return fabric_import_join(thread, out, capacity);
}

/* Takes a context save now: after a crash the thread continues from here. */
static inline void fabric_checkpoint(void) { fabric_import_checkpoint(); }

/* Lets the system save or move this thread; returns at once when it has nothing to do. */
static inline void fabric_yield(void) { fabric_import_yield(); }

/* Length in bytes of the argument this thread was spawned with (0 for main). */
static inline size_t fabric_thread_arg_length(void) { return fabric_import_arg_length(); }

/*
 * Copies this thread's argument to `out` when it fits in `capacity` bytes. Returns its length
 * either way, so a result larger than `capacity` means nothing was copied.
 */
static inline size_t fabric_thread_arg(void *out, size_t capacity) {
  size_t length = fabric_import_arg_length();
  if (length <= capacity) fabric_import_arg_read(out);
  return length;
}

/* Sets the bytes that fabric_join hands to this thread's joiner (copied now). */
static inline void fabric_set_result(const void *result, size_t length) {
  fabric_import_set_result(result, length);
}

/* This thread's number within its process: 0 for main. */
static inline int32_t fabric_thread_id(void) { return fabric_import_thread_id(); }

#else /* native: threads run inline, one after another */

#include <stdlib.h>
#include <string.h>

/* Thread entries one native program may define, and threads it may spawn. */
#define FABRIC_NATIVE_ENTRIES_MAX 256
#define FABRIC_NATIVE_THREADS_MAX 4096

typedef void (*fabric_entry_function)(void);

struct fabric_native_entry {
  const char *name;
  fabric_entry_function function;
};

struct fabric_native_thread {
  const void *arg;
  size_t arg_length;
  void *result;
  size_t result_length;
};

static struct fabric_native_entry fabric_native_entries[FABRIC_NATIVE_ENTRIES_MAX];
static int fabric_native_entry_count;
/* Thread 0 is main; slot n holds spawned thread n. */
static struct fabric_native_thread fabric_native_threads[FABRIC_NATIVE_THREADS_MAX];
static int32_t fabric_native_thread_count = 1;
static int32_t fabric_native_current;

static inline void fabric_native_register(const char *name, fabric_entry_function function) {
  if (fabric_native_entry_count == FABRIC_NATIVE_ENTRIES_MAX) abort();
  fabric_native_entries[fabric_native_entry_count].name = name;
  fabric_native_entries[fabric_native_entry_count].function = function;
  fabric_native_entry_count++;
}

/* Registers the entry by name before main runs, so fabric_spawn can find it. */
#define FABRIC_THREAD(name)                                                                         \
  void name(void);                                                                                  \
  __attribute__((constructor)) static void fabric_register_##name(void) {                           \
    fabric_native_register(#name, name);                                                            \
  }                                                                                                 \
  void name(void)

static inline fabric_thread fabric_spawn(const char *entry, const void *arg, size_t length) {
  fabric_entry_function function = NULL;
  for (int index = 0; index < fabric_native_entry_count; index++) {
    if (strcmp(fabric_native_entries[index].name, entry) == 0) function = fabric_native_entries[index].function;
  }
  if (function == NULL) return FABRIC_SPAWN_NO_SUCH_ENTRY;
  if (fabric_native_thread_count == FABRIC_NATIVE_THREADS_MAX) return FABRIC_SPAWN_TOO_MANY_THREADS;
  fabric_thread thread = fabric_native_thread_count++;
  fabric_native_threads[thread].arg = arg;
  fabric_native_threads[thread].arg_length = length;
  int32_t spawner = fabric_native_current;
  fabric_native_current = thread;
  function();
  fabric_native_current = spawner;
  /* The argument belonged to the spawner and may not outlive this call. */
  fabric_native_threads[thread].arg = NULL;
  return thread;
}

static inline int32_t fabric_join(fabric_thread thread, void *out, size_t capacity) {
  if (thread <= 0 || thread >= fabric_native_thread_count) return FABRIC_JOIN_NO_SUCH_THREAD;
  struct fabric_native_thread *record = &fabric_native_threads[thread];
  size_t copied = record->result_length < capacity ? record->result_length : capacity;
  if (copied > 0) memcpy(out, record->result, copied);
  return (int32_t)record->result_length;
}

static inline void fabric_checkpoint(void) {}

static inline void fabric_yield(void) {}

static inline size_t fabric_thread_arg_length(void) {
  return fabric_native_threads[fabric_native_current].arg_length;
}

static inline size_t fabric_thread_arg(void *out, size_t capacity) {
  struct fabric_native_thread *record = &fabric_native_threads[fabric_native_current];
  if (record->arg_length <= capacity && record->arg_length > 0) memcpy(out, record->arg, record->arg_length);
  return record->arg_length;
}

static inline void fabric_set_result(const void *result, size_t length) {
  struct fabric_native_thread *record = &fabric_native_threads[fabric_native_current];
  free(record->result);
  record->result = malloc(length > 0 ? length : 1);
  if (record->result == NULL) abort();
  if (length > 0) memcpy(record->result, result, length);
  record->result_length = length;
}

static inline int32_t fabric_thread_id(void) { return fabric_native_current; }

#endif /* __wasm__ */

#ifdef __cplusplus
}
#endif

#endif /* FABRIC_H */
