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
#include <string.h>

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

/*
 * Coordination (see fabric_var_add and the calls after it, at the end of this file): negative
 * results of the sync calls, the same numbers as `SyncError` in host/abi.ts. fabric_strerror
 * names them.
 */
#define FABRIC_SYNC_INVALID (-1)      /* bad name, TTL or capacity out of bounds, token < 1 */
#define FABRIC_SYNC_TOO_LARGE (-2)    /* a value over FABRIC_SYNC_VALUE_BYTES_MAX */
#define FABRIC_SYNC_TIMEOUT (-3)      /* waited for the timeout (or, with no wait, would wait) */
#define FABRIC_SYNC_NOT_HOLDER (-4)   /* renew or release of a lock this thread does not hold */
#define FABRIC_SYNC_STALE_TOKEN (-5)  /* a fenced write with a token older than one already seen */
#define FABRIC_SYNC_FULL (-6)         /* the queue stayed full for the timeout */
#define FABRIC_SYNC_CLOSED (-7)       /* push on a closed queue, or pop on a closed and empty one */
#define FABRIC_SYNC_UNSET (-8)        /* get of a variable that was never set */
#define FABRIC_SYNC_WRONG_TYPE (-9)   /* add on a variable that does not hold 8 bytes */
#define FABRIC_SYNC_UNAVAILABLE (-10) /* the store could not be reached in time (see below) */

/* Bytes of a name or group name (UTF-8), and of a value or queue item, at most. */
#define FABRIC_SYNC_NAME_BYTES_MAX 255
#define FABRIC_SYNC_VALUE_BYTES_MAX 65536
/* Timeouts in ms: wait for ever, or try once without waiting. */
#define FABRIC_WAIT_FOREVER (-1)
#define FABRIC_NO_WAIT 0

/* Request layout of fabric.sync (host/abi.ts): a 32-byte header, then group, name, values. */
#define FABRIC_SYNC_REQUEST_VERSION 1
#define FABRIC_SYNC_HEADER_BYTES 32
#define FABRIC_SYNC_REQUEST_BYTES_MAX \
  (FABRIC_SYNC_HEADER_BYTES + 2 * FABRIC_SYNC_NAME_BYTES_MAX + 2 * FABRIC_SYNC_VALUE_BYTES_MAX)
enum {
  FABRIC_SYNC_OP_GROUP = 1,
  FABRIC_SYNC_OP_VAR_GET = 2,
  FABRIC_SYNC_OP_VAR_SET = 3,
  FABRIC_SYNC_OP_VAR_CAS = 4,
  FABRIC_SYNC_OP_VAR_ADD = 5,
  FABRIC_SYNC_OP_LOCK_ACQUIRE = 6,
  FABRIC_SYNC_OP_LOCK_RENEW = 7,
  FABRIC_SYNC_OP_LOCK_RELEASE = 8,
  FABRIC_SYNC_OP_FENCED_GET = 9,
  FABRIC_SYNC_OP_FENCED_SET = 10,
  FABRIC_SYNC_OP_QUEUE_PUSH = 11,
  FABRIC_SYNC_OP_QUEUE_POP = 12,
  FABRIC_SYNC_OP_QUEUE_CLOSE = 13,
  FABRIC_SYNC_OP_QUEUE_LENGTH = 14,
  FABRIC_SYNC_OP_BARRIER_WAIT = 15
};

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
FABRIC_IMPORT(sync)
int32_t fabric_import_sync(const void *request, size_t request_length, void *out, size_t out_capacity);

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

/* Sends one fabric.sync request (built by the calls below); returns the reply length or an error. */
static inline int32_t fabric_sync_send(const uint8_t *request, size_t length, void *out, size_t capacity) {
  return fabric_import_sync(request, length, out, capacity);
}

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

/*
 * Coordination, natively: one table in this process's memory, with the semantics of the runtime.
 * Threads run one after another here, so a call that would have to wait for another thread (a
 * held lock, an empty or full queue, a barrier of more than one party) returns FABRIC_SYNC_TIMEOUT
 * at once instead of waiting for ever. The request bytes are the wasm ones (read as
 * little-endian, as on every host this runs on).
 */
#include <time.h>

/* Named objects one native program may create. */
#define FABRIC_NATIVE_SYNC_OBJECTS_MAX 4096

struct fabric_native_item {
  struct fabric_native_item *next;
  size_t length;
  uint8_t bytes[];
};

struct fabric_native_object {
  uint8_t kind; /* 'v' variable, 'l' lock, 'f' fenced variable, 'q' queue, 'b' barrier */
  uint8_t *key; /* group length (2 bytes), group, name */
  size_t key_length;
  uint8_t *value;
  size_t value_length;
  int set;
  int64_t token; /* lock: the last token issued; fenced variable: the newest token seen */
  int32_t holder;
  int64_t expires_ms;
  struct fabric_native_item *head;
  struct fabric_native_item *tail;
  int64_t count;
  int closed;
  int32_t round;
};

static struct fabric_native_object fabric_native_objects[FABRIC_NATIVE_SYNC_OBJECTS_MAX];
static int fabric_native_object_count;

static inline int64_t fabric_native_now_ms(void) {
  struct timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  return (int64_t)now.tv_sec * 1000 + now.tv_nsec / 1000000;
}

static inline struct fabric_native_object *fabric_native_object(uint8_t kind, const uint8_t *group,
                                                               uint16_t group_length, const uint8_t *name,
                                                               uint16_t name_length) {
  size_t key_length = 2 + (size_t)group_length + name_length;
  for (int index = 0; index < fabric_native_object_count; index++) {
    struct fabric_native_object *object = &fabric_native_objects[index];
    if (object->kind == kind && object->key_length == key_length && memcmp(object->key, &group_length, 2) == 0 &&
        memcmp(object->key + 2, group, group_length) == 0 &&
        memcmp(object->key + 2 + group_length, name, name_length) == 0)
      return object;
  }
  if (fabric_native_object_count == FABRIC_NATIVE_SYNC_OBJECTS_MAX) return NULL;
  struct fabric_native_object *object = &fabric_native_objects[fabric_native_object_count++];
  memset(object, 0, sizeof *object);
  object->kind = kind;
  object->key = (uint8_t *)malloc(key_length);
  if (object->key == NULL) abort();
  memcpy(object->key, &group_length, 2);
  memcpy(object->key + 2, group, group_length);
  memcpy(object->key + 2 + group_length, name, name_length);
  object->key_length = key_length;
  object->holder = -1;
  return object;
}

static inline int32_t fabric_native_reply(const void *bytes, size_t length, void *out, size_t capacity) {
  if (length > capacity) return FABRIC_SYNC_TOO_LARGE;
  if (length > 0) memcpy(out, bytes, length);
  return (int32_t)length;
}

static inline void fabric_native_store(struct fabric_native_object *object, const uint8_t *value, size_t length) {
  free(object->value);
  object->value = (uint8_t *)malloc(length > 0 ? length : 1);
  if (object->value == NULL) abort();
  if (length > 0) memcpy(object->value, value, length);
  object->value_length = length;
  object->set = 1;
}

static inline int32_t fabric_sync_send(const uint8_t *request, size_t length, void *out, size_t capacity) {
  if (length < FABRIC_SYNC_HEADER_BYTES || request[0] != FABRIC_SYNC_REQUEST_VERSION) return FABRIC_SYNC_INVALID;
  uint8_t op = request[1];
  uint16_t group_length, name_length;
  int64_t a, b;
  uint32_t value_length, value2_length;
  memcpy(&group_length, request + 2, 2);
  memcpy(&name_length, request + 4, 2);
  memcpy(&a, request + 8, 8);
  memcpy(&b, request + 16, 8);
  memcpy(&value_length, request + 24, 4);
  memcpy(&value2_length, request + 28, 4);
  const uint8_t *group = request + FABRIC_SYNC_HEADER_BYTES;
  const uint8_t *name = group + group_length;
  const uint8_t *value = name + name_length;
  const uint8_t *value2 = value + value_length;
  if (op == FABRIC_SYNC_OP_GROUP) return 0;
  uint8_t kind = op <= FABRIC_SYNC_OP_VAR_ADD      ? 'v'
                 : op <= FABRIC_SYNC_OP_LOCK_RELEASE ? 'l'
                 : op <= FABRIC_SYNC_OP_FENCED_SET   ? 'f'
                 : op <= FABRIC_SYNC_OP_QUEUE_LENGTH ? 'q'
                                                     : 'b';
  struct fabric_native_object *object = fabric_native_object(kind, group, group_length, name, name_length);
  if (object == NULL) return FABRIC_SYNC_UNAVAILABLE;
  int64_t now = fabric_native_now_ms();
  if (kind == 'l' && object->holder >= 0 && object->expires_ms <= now) object->holder = -1;
  switch (op) {
  case FABRIC_SYNC_OP_FENCED_GET:
    /* A holder's read (a token): refused when a newer token was seen, else raises the fence. */
    if (a < 0) return FABRIC_SYNC_INVALID;
    if (a > 0 && a < object->token) return FABRIC_SYNC_STALE_TOKEN;
    if (a > object->token) object->token = a;
    if (!object->set) return FABRIC_SYNC_UNSET;
    return fabric_native_reply(object->value, object->value_length, out, capacity);
  case FABRIC_SYNC_OP_VAR_GET:
    if (!object->set) return FABRIC_SYNC_UNSET;
    return fabric_native_reply(object->value, object->value_length, out, capacity);
  case FABRIC_SYNC_OP_VAR_SET:
    fabric_native_store(object, value, value_length);
    return 0;
  case FABRIC_SYNC_OP_VAR_CAS: {
    int matches = a == 1 ? !object->set
                         : object->set && object->value_length == value_length &&
                               memcmp(object->value, value, value_length) == 0;
    if (matches) fabric_native_store(object, value2, value2_length);
    return matches;
  }
  case FABRIC_SYNC_OP_VAR_ADD: {
    int64_t number = 0;
    if (object->set && object->value_length != 8) return FABRIC_SYNC_WRONG_TYPE;
    if (object->set) memcpy(&number, object->value, 8);
    number += a;
    fabric_native_store(object, (const uint8_t *)&number, 8);
    return fabric_native_reply(&number, 8, out, capacity);
  }
  case FABRIC_SYNC_OP_LOCK_ACQUIRE:
    if (a <= 0) return FABRIC_SYNC_INVALID;
    if (object->holder >= 0 && object->holder != fabric_native_current) return FABRIC_SYNC_TIMEOUT;
    if (object->holder < 0) object->token++;
    object->holder = fabric_native_current;
    object->expires_ms = now + a;
    return fabric_native_reply(&object->token, 8, out, capacity);
  case FABRIC_SYNC_OP_LOCK_RENEW:
    if (b <= 0) return FABRIC_SYNC_INVALID;
    if (object->holder != fabric_native_current || object->token != a) return FABRIC_SYNC_NOT_HOLDER;
    object->expires_ms = now + b;
    return 0;
  case FABRIC_SYNC_OP_LOCK_RELEASE:
    if (object->holder != fabric_native_current || object->token != a) return FABRIC_SYNC_NOT_HOLDER;
    object->holder = -1;
    return 0;
  case FABRIC_SYNC_OP_FENCED_SET:
    if (a < object->token) return FABRIC_SYNC_STALE_TOKEN;
    object->token = a;
    fabric_native_store(object, value, value_length);
    return 0;
  case FABRIC_SYNC_OP_QUEUE_PUSH: {
    if (object->closed) return FABRIC_SYNC_CLOSED;
    if (a > 0 && object->count >= a) return FABRIC_SYNC_FULL;
    struct fabric_native_item *item =
        (struct fabric_native_item *)malloc(sizeof(struct fabric_native_item) + value_length);
    if (item == NULL) abort();
    item->next = NULL;
    item->length = value_length;
    if (value_length > 0) memcpy(item->bytes, value, value_length);
    if (object->tail == NULL) object->head = item;
    else object->tail->next = item;
    object->tail = item;
    object->count++;
    return 0;
  }
  case FABRIC_SYNC_OP_QUEUE_POP: {
    struct fabric_native_item *item = object->head;
    if (item == NULL) return object->closed ? FABRIC_SYNC_CLOSED : FABRIC_SYNC_TIMEOUT;
    if (item->length > capacity) return FABRIC_SYNC_TOO_LARGE;
    object->head = item->next;
    if (object->head == NULL) object->tail = NULL;
    object->count--;
    int32_t result = fabric_native_reply(item->bytes, item->length, out, capacity);
    free(item);
    return result;
  }
  case FABRIC_SYNC_OP_QUEUE_CLOSE:
    object->closed = 1;
    return 0;
  case FABRIC_SYNC_OP_QUEUE_LENGTH:
    return (int32_t)object->count;
  case FABRIC_SYNC_OP_BARRIER_WAIT:
    if (a < 1) return FABRIC_SYNC_INVALID;
    if (a > 1) return FABRIC_SYNC_TIMEOUT;
    return object->round++;
  default:
    (void)value2;
    return FABRIC_SYNC_INVALID;
  }
}

#endif /* __wasm__ */

/*
 * Coordination: shared variables, locks with a TTL and fencing tokens, fenced variables, queues
 * and barriers, each named in a context: the process's global context (FABRIC_GLOBAL) or a group
 * (fabric_group). Every call is one fabric.sync request (layout in host/abi.ts), applied exactly
 * once, also when a thread restored from a context save replays it.
 *
 *   int64_t token;
 *   fabric_var_add(FABRIC_GLOBAL, "hits", 1, NULL);
 *   if (fabric_lock_acquire(FABRIC_GLOBAL, "table", 5000, FABRIC_WAIT_FOREVER, &token) == 0) {
 *     fabric_fenced_set(FABRIC_GLOBAL, "table", token, "mine", 4);  // FABRIC_SYNC_STALE_TOKEN if
 *     fabric_lock_release(FABRIC_GLOBAL, "table", token);            // a newer holder wrote
 *   }
 *
 * FABRIC_SYNC_UNAVAILABLE comes after the runtime itself retried for a while; a get, set, length,
 * close, fenced set, lock acquire (by the same thread: it gets its own lease back), renew or
 * release may be sent again, but an add, compare-and-swap, push, pop or barrier wait sent again is
 * a new request and may take effect twice if the first one landed (host/abi.ts lists the bounds).
 *
 * Every call returns a negative FABRIC_SYNC_* error or a result >= 0; names are NUL-terminated
 * UTF-8 of 1 to FABRIC_SYNC_NAME_BYTES_MAX bytes. Calls that hand back bytes (gets and pops) take
 * `out` and `capacity`, copy at most `capacity` bytes and return the whole length, as fabric_join
 * does: a result over `capacity` means the copy was cut short (a popped item is consumed anyway).
 */

/* A context: `group` NULL (or "") is the process's global context. */
typedef struct {
  const char *group;
} fabric_context;

#define FABRIC_GLOBAL ((fabric_context){NULL})

static inline void fabric_sync_put(uint8_t *at, const void *value, size_t length) {
  memcpy(at, value, length); /* little-endian on wasm32 and on the hosts the native build runs on */
}

/* Builds one request (layout in host/abi.ts) and sends it; the reply goes to out (capacity bytes). */
static inline int32_t fabric_sync(uint8_t op, fabric_context context, const char *name, int64_t a, int64_t b,
                                  const void *value, size_t value_length, const void *value2,
                                  size_t value2_length, void *out, size_t capacity) {
  static uint8_t request[FABRIC_SYNC_REQUEST_BYTES_MAX];
  size_t group_length = context.group == NULL ? 0 : strlen(context.group);
  size_t name_length = name == NULL ? 0 : strlen(name);
  if (group_length > FABRIC_SYNC_NAME_BYTES_MAX || name_length > FABRIC_SYNC_NAME_BYTES_MAX)
    return FABRIC_SYNC_INVALID;
  if (op == FABRIC_SYNC_OP_GROUP ? group_length == 0 : name_length == 0) return FABRIC_SYNC_INVALID;
  if (value_length > FABRIC_SYNC_VALUE_BYTES_MAX || value2_length > FABRIC_SYNC_VALUE_BYTES_MAX)
    return FABRIC_SYNC_TOO_LARGE;
  uint16_t lengths[3] = {(uint16_t)group_length, (uint16_t)name_length, 0};
  uint32_t value_lengths[2] = {(uint32_t)value_length, (uint32_t)value2_length};
  request[0] = FABRIC_SYNC_REQUEST_VERSION;
  request[1] = op;
  fabric_sync_put(request + 2, lengths, sizeof lengths);
  fabric_sync_put(request + 8, &a, 8);
  fabric_sync_put(request + 16, &b, 8);
  fabric_sync_put(request + 24, value_lengths, sizeof value_lengths);
  size_t at = FABRIC_SYNC_HEADER_BYTES;
  if (group_length > 0) memcpy(request + at, context.group, group_length);
  at += group_length;
  if (name_length > 0) memcpy(request + at, name, name_length);
  at += name_length;
  if (value_length > 0) memcpy(request + at, value, value_length);
  at += value_length;
  if (value2_length > 0) memcpy(request + at, value2, value2_length);
  at += value2_length;
  return fabric_sync_send(request, at, out, capacity);
}

/* A request whose reply is a value or item: received whole, then copied to out as far as it fits. */
static inline int32_t fabric_sync_bytes(uint8_t op, fabric_context context, const char *name, int64_t a,
                                        void *out, size_t capacity) {
  static uint8_t reply[FABRIC_SYNC_VALUE_BYTES_MAX];
  int32_t length = fabric_sync(op, context, name, a, 0, NULL, 0, NULL, 0, reply, sizeof reply);
  if (length > 0 && out != NULL) memcpy(out, reply, (size_t)length < capacity ? (size_t)length : capacity);
  return length;
}

/* Joins (creates if needed) the context group `name`; this thread's later children are placed near it. */
static inline int32_t fabric_group(const char *name, fabric_context *context) {
  fabric_context group = {name};
  int32_t result = fabric_sync(FABRIC_SYNC_OP_GROUP, group, NULL, 0, 0, NULL, 0, NULL, 0, NULL, 0);
  if (result >= 0 && context != NULL) *context = group;
  return result;
}

/* Shared variables: bytes every thread of the context sees. Get: the length, or FABRIC_SYNC_UNSET. */
static inline int32_t fabric_var_get(fabric_context context, const char *name, void *out, size_t capacity) {
  return fabric_sync_bytes(FABRIC_SYNC_OP_VAR_GET, context, name, 0, out, capacity);
}

static inline int32_t fabric_var_set(fabric_context context, const char *name, const void *value, size_t length) {
  return fabric_sync(FABRIC_SYNC_OP_VAR_SET, context, name, 0, 0, value, length, NULL, 0, NULL, 0);
}

/*
 * Sets `replacement` if the value is now `expected` (expected NULL: if it is unset), atomically.
 * Returns 1 when it swapped, 0 when it did not.
 */
static inline int32_t fabric_var_cas(fabric_context context, const char *name, const void *expected,
                                     size_t expected_length, const void *replacement, size_t replacement_length) {
  return fabric_sync(FABRIC_SYNC_OP_VAR_CAS, context, name, expected == NULL ? 1 : 0, 0, expected,
                     expected == NULL ? 0 : expected_length, replacement, replacement_length, NULL, 0);
}

/* Adds `delta` to the i64 value (unset counts as 0) atomically; the new value goes to *result. */
static inline int32_t fabric_var_add(fabric_context context, const char *name, int64_t delta, int64_t *result) {
  int64_t value = 0;
  int32_t length = fabric_sync(FABRIC_SYNC_OP_VAR_ADD, context, name, delta, 0, NULL, 0, NULL, 0, &value, 8);
  if (length < 0) return length;
  if (result != NULL) *result = value;
  return 0;
}

/* The value as an i64: 0, FABRIC_SYNC_UNSET, or FABRIC_SYNC_WRONG_TYPE when it is not 8 bytes. */
static inline int32_t fabric_var_get_i64(fabric_context context, const char *name, int64_t *value) {
  int64_t read = 0;
  int32_t length = fabric_var_get(context, name, &read, 8);
  if (length < 0) return length;
  if (length != 8) return FABRIC_SYNC_WRONG_TYPE;
  *value = read;
  return 0;
}

static inline int32_t fabric_var_set_i64(fabric_context context, const char *name, int64_t value) {
  return fabric_var_set(context, name, &value, 8);
}

/* Compare-and-swap on i64 values, where an unset variable counts as 0 (as for fabric_var_add). */
static inline int32_t fabric_var_cas_i64(fabric_context context, const char *name, int64_t expected,
                                         int64_t replacement) {
  if (expected == 0) {
    int32_t swapped = fabric_var_cas(context, name, NULL, 0, &replacement, 8);
    if (swapped != 0) return swapped;
  }
  return fabric_var_cas(context, name, &expected, 8, &replacement, 8);
}

static inline int32_t fabric_var_get_f64(fabric_context context, const char *name, double *value) {
  double read = 0;
  int32_t length = fabric_var_get(context, name, &read, 8);
  if (length < 0) return length;
  if (length != 8) return FABRIC_SYNC_WRONG_TYPE;
  *value = read;
  return 0;
}

static inline int32_t fabric_var_set_f64(fabric_context context, const char *name, double value) {
  return fabric_var_set(context, name, &value, 8);
}

/*
 * Locks with a lease: held until released or until `ttl_ms` passes without a renewal, so a holder
 * that died frees it. Acquire waits up to `timeout_ms` (FABRIC_WAIT_FOREVER, FABRIC_NO_WAIT) and
 * returns 0 with the fencing token in *token (larger than any earlier holder's), or
 * FABRIC_SYNC_TIMEOUT. A TTL out of the runtime's bounds is FABRIC_SYNC_INVALID.
 */
static inline int32_t fabric_lock_acquire(fabric_context context, const char *name, int64_t ttl_ms,
                                          int64_t timeout_ms, int64_t *token) {
  if (ttl_ms <= 0) return FABRIC_SYNC_INVALID;
  int64_t issued = 0;
  int32_t length =
      fabric_sync(FABRIC_SYNC_OP_LOCK_ACQUIRE, context, name, ttl_ms, timeout_ms, NULL, 0, NULL, 0, &issued, 8);
  if (length < 0) return length;
  if (token != NULL) *token = issued;
  return 0;
}

/* Extends the lease to `ttl_ms` from now: 0, or FABRIC_SYNC_NOT_HOLDER when it ran out already. */
static inline int32_t fabric_lock_renew(fabric_context context, const char *name, int64_t token, int64_t ttl_ms) {
  if (ttl_ms <= 0) return FABRIC_SYNC_INVALID;
  return fabric_sync(FABRIC_SYNC_OP_LOCK_RENEW, context, name, token, ttl_ms, NULL, 0, NULL, 0, NULL, 0);
}

/* Releases the lock: 0, or FABRIC_SYNC_NOT_HOLDER (never held with this token, or its lease ran out). */
static inline int32_t fabric_lock_release(fabric_context context, const char *name, int64_t token) {
  return fabric_sync(FABRIC_SYNC_OP_LOCK_RELEASE, context, name, token, 0, NULL, 0, NULL, 0, NULL, 0);
}

/* Fenced variables: a write carries a fencing token and is refused when a newer one was seen. */
static inline int32_t fabric_fenced_get(fabric_context context, const char *name, void *out, size_t capacity) {
  return fabric_sync_bytes(FABRIC_SYNC_OP_FENCED_GET, context, name, 0, out, capacity);
}

/*
 * Reads as the holder of the lock whose `token` is given: the value's length (or
 * FABRIC_SYNC_UNSET), or FABRIC_SYNC_STALE_TOKEN when a newer holder read or wrote (this thread lost
 * the lock). From this read on, a write with an older token is refused: a holder whose lease ran
 * out while it held on cannot overwrite what this one computes from what it read.
 */
static inline int32_t fabric_fenced_get_as_holder(fabric_context context, const char *name, int64_t token,
                                                  void *out, size_t capacity) {
  return fabric_sync_bytes(FABRIC_SYNC_OP_FENCED_GET, context, name, token, out, capacity);
}

/* Writes with `token`: 0, or FABRIC_SYNC_STALE_TOKEN when a newer token was seen. */
static inline int32_t fabric_fenced_set(fabric_context context, const char *name, int64_t token,
                                        const void *value, size_t length) {
  return fabric_sync(FABRIC_SYNC_OP_FENCED_SET, context, name, token, 0, value, length, NULL, 0, NULL, 0);
}

/*
 * Queues: FIFO, bounded to `capacity` items (0: the runtime's default), each item delivered to
 * exactly one pop. Push waits up to `timeout_ms` while full: 0, FABRIC_SYNC_FULL or
 * FABRIC_SYNC_CLOSED.
 */
static inline int32_t fabric_queue_push(fabric_context context, const char *name, const void *item, size_t length,
                                        uint32_t capacity, int64_t timeout_ms) {
  return fabric_sync(FABRIC_SYNC_OP_QUEUE_PUSH, context, name, capacity, timeout_ms, item, length, NULL, 0, NULL,
                     0);
}

/* Pops the oldest item, waiting up to `timeout_ms`: its length, FABRIC_SYNC_TIMEOUT, or FABRIC_SYNC_CLOSED. */
static inline int32_t fabric_queue_pop(fabric_context context, const char *name, void *out, size_t capacity,
                                       int64_t timeout_ms) {
  return fabric_sync_bytes(FABRIC_SYNC_OP_QUEUE_POP, context, name, timeout_ms, out, capacity);
}

/* Refuses further pushes; pops drain what is left, then return FABRIC_SYNC_CLOSED. */
static inline int32_t fabric_queue_close(fabric_context context, const char *name) {
  return fabric_sync(FABRIC_SYNC_OP_QUEUE_CLOSE, context, name, 0, 0, NULL, 0, NULL, 0, NULL, 0);
}

/* The number of items in the queue now. */
static inline int32_t fabric_queue_length(fabric_context context, const char *name) {
  return fabric_sync(FABRIC_SYNC_OP_QUEUE_LENGTH, context, name, 0, 0, NULL, 0, NULL, 0, NULL, 0);
}

/* Waits until `parties` threads arrived; returns the round (0, then 1, ...): the barrier is reusable. */
static inline int32_t fabric_barrier_wait(fabric_context context, const char *name, uint32_t parties) {
  if (parties < 1) return FABRIC_SYNC_INVALID;
  return fabric_sync(FABRIC_SYNC_OP_BARRIER_WAIT, context, name, parties, 0, NULL, 0, NULL, 0, NULL, 0);
}

/* A sentence for a FABRIC_SYNC_* error (and for 0 and other results). */
static inline const char *fabric_strerror(int32_t error) {
  switch (error) {
  case FABRIC_SYNC_INVALID:
    return "invalid request (a name of 1 to 255 bytes, a TTL or queue capacity out of the runtime's bounds, a token below 1, no parties)";
  case FABRIC_SYNC_TOO_LARGE:
    return "value over the size limit of 65536 bytes";
  case FABRIC_SYNC_TIMEOUT:
    return "timed out";
  case FABRIC_SYNC_NOT_HOLDER:
    return "this thread does not hold the lock (not acquired, released, or its lease ran out)";
  case FABRIC_SYNC_STALE_TOKEN:
    return "stale fencing token: a newer lock holder wrote already";
  case FABRIC_SYNC_FULL:
    return "the queue is full";
  case FABRIC_SYNC_CLOSED:
    return "the queue is closed";
  case FABRIC_SYNC_UNSET:
    return "the variable was never set";
  case FABRIC_SYNC_WRONG_TYPE:
    return "the variable does not hold an 8-byte number";
  case FABRIC_SYNC_UNAVAILABLE:
    return "the coordination store could not be reached in time (the call may or may not have taken effect)";
  default:
    return error >= 0 ? "success" : "unknown error";
  }
}

#ifdef __cplusplus
}
#endif

#endif /* FABRIC_H */
