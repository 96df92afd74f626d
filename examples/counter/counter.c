/*
 * A shared counter: many threads add to one shared variable; it ends at exactly the number of
 * increments, whatever crashed on the way (each add is applied once, also when a thread replays
 * it from a context save). Written in C to show guest-sdk/c/fabric.h.
 *
 *   npx fabric build examples/counter/counter.c
 *   npx fabric run examples/counter/counter.wasm -- 50 10000 add   (threads, increments, how)
 *
 * How: "add" (fabric_var_add, one atomic request per increment) or "cas" (read, then
 * compare-and-swap, again when another thread got in between), or "lock" (a lock around a fenced
 * read and write, both with the lock's token: a holder whose lease ran out while it held on finds
 * its read or write refused once a newer holder has read, and takes the lock again). All three are
 * exact under any crash or stall. Natively (gcc -I guest-sdk/c), the threads run one after another
 * and print the same.
 */

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fabric.h"

#define THREADS_DEFAULT 50u
#define INCREMENTS_DEFAULT 10000u
#define THREADS_MAX 1000u
#define INCREMENTS_MAX 100000000u
/* The lock's lease: long enough for a holder to resume on another node after a crash. */
#define LOCK_TTL_MS 10000

enum how { HOW_ADD, HOW_CAS, HOW_LOCK };

/* What main hands each thread. */
struct share {
  uint32_t increments;
  uint32_t how;
};

static const char counter_name[] = "counter";

/* Set in the counting threads: a failed call there must fail the thread, not just end it. */
static int in_counting_thread = 0;

static void fail(const char *what, int32_t error) {
  fprintf(stderr, "counter: %s: %s (%d)\n", what, fabric_strerror(error), (int)error);
  /*
   * exit(1) in a thread ends only that thread, as a success its joiner cannot tell from a finished
   * one: main would print a short count. abort() fails the thread, and main's join says so.
   */
  if (in_counting_thread) abort();
  exit(1);
}

static void increment_by_add(void) {
  int32_t error = fabric_var_add(FABRIC_GLOBAL, counter_name, 1, NULL);
  if (error < 0) fail("fabric_var_add", error);
}

static void increment_by_cas(void) {
  for (;;) {
    int64_t value = 0;
    int32_t error = fabric_var_get_i64(FABRIC_GLOBAL, counter_name, &value);
    if (error < 0 && error != FABRIC_SYNC_UNSET) fail("fabric_var_get_i64", error);
    int32_t swapped = fabric_var_cas_i64(FABRIC_GLOBAL, counter_name, value, value + 1);
    if (swapped < 0) fail("fabric_var_cas_i64", swapped);
    if (swapped == 1) return;
  }
}

/*
 * Under the lock, reads the fenced counter and writes it + 1, both with the lock's token. A read or
 * write that comes back stale was refused (this thread lost the lock to a newer holder, who has
 * read), so nothing was added: take the lock again and retry.
 */
static void increment_under_lock(void) {
  for (;;) {
    int64_t token = 0;
    int32_t error = fabric_lock_acquire(FABRIC_GLOBAL, counter_name, LOCK_TTL_MS, FABRIC_WAIT_FOREVER, &token);
    if (error < 0) fail("fabric_lock_acquire", error);
    int64_t value = 0;
    int32_t length = fabric_fenced_get_as_holder(FABRIC_GLOBAL, counter_name, token, &value, sizeof value);
    if (length < 0 && length != FABRIC_SYNC_UNSET && length != FABRIC_SYNC_STALE_TOKEN)
      fail("fabric_fenced_get_as_holder", length);
    if (length >= 0 && length != (int32_t)sizeof value)
      fail("fabric_fenced_get_as_holder", FABRIC_SYNC_WRONG_TYPE);
    int32_t written = FABRIC_SYNC_STALE_TOKEN;
    if (length != FABRIC_SYNC_STALE_TOKEN) {
      value++;
      written = fabric_fenced_set(FABRIC_GLOBAL, counter_name, token, &value, sizeof value);
      if (written < 0 && written != FABRIC_SYNC_STALE_TOKEN) fail("fabric_fenced_set", written);
    }
    int32_t released = fabric_lock_release(FABRIC_GLOBAL, counter_name, token);
    if (released < 0 && released != FABRIC_SYNC_NOT_HOLDER) fail("fabric_lock_release", released);
    if (written == 0) return;
  }
}

FABRIC_THREAD(count) {
  in_counting_thread = 1;
  struct share share;
  if (fabric_thread_arg(&share, sizeof share) != sizeof share) return;
  for (uint32_t done = 0; done < share.increments; done++) {
    if (share.how == HOW_ADD) increment_by_add();
    else if (share.how == HOW_CAS) increment_by_cas();
    else increment_under_lock();
  }
}

static uint32_t argument(int argc, char **argv, int index, uint32_t fallback, uint32_t max) {
  if (argc <= index) return fallback;
  char *end;
  unsigned long value = strtoul(argv[index], &end, 10);
  if (*end != 0 || value == 0 || value > max) {
    fprintf(stderr, "counter: argument %d must be a whole number from 1 to %u, got \"%s\"\n", index, max,
            argv[index]);
    exit(2);
  }
  return (uint32_t)value;
}

int main(int argc, char **argv) {
  uint32_t threads = argument(argc, argv, 1, THREADS_DEFAULT, THREADS_MAX);
  uint32_t increments = argument(argc, argv, 2, INCREMENTS_DEFAULT, INCREMENTS_MAX);
  const char *how_name = argc > 3 ? argv[3] : "add";
  enum how how;
  if (strcmp(how_name, "add") == 0) how = HOW_ADD;
  else if (strcmp(how_name, "cas") == 0) how = HOW_CAS;
  else if (strcmp(how_name, "lock") == 0) how = HOW_LOCK;
  else {
    fprintf(stderr, "counter: how must be add, cas or lock, got \"%s\"\n", how_name);
    return 2;
  }
  printf("%u threads add %u in all (%s)\n", threads, increments, how_name);
  fabric_thread spawned[THREADS_MAX];
  for (uint32_t index = 0; index < threads; index++) {
    /* Thread `index` does its even share, and one more while the remainder lasts. */
    struct share share = {increments / threads + (index < increments % threads ? 1u : 0u), (uint32_t)how};
    spawned[index] = fabric_spawn("count", &share, sizeof share);
    if (spawned[index] < 0) {
      fprintf(stderr, "counter: could not start thread %u (error %d)\n", index, (int)spawned[index]);
      return 1;
    }
  }
  for (uint32_t index = 0; index < threads; index++) {
    int32_t joined = fabric_join(spawned[index], NULL, 0);
    if (joined < 0) {
      fprintf(stderr, "counter: thread %u failed (join returned %d)\n", index, (int)joined);
      return 1;
    }
  }
  int64_t value = 0;
  int32_t error = how == HOW_LOCK ? fabric_fenced_get(FABRIC_GLOBAL, counter_name, &value, sizeof value)
                                  : fabric_var_get_i64(FABRIC_GLOBAL, counter_name, &value);
  if (error < 0) fail("reading the counter", error);
  printf("counter: %lld (expected %u)\n", (long long)value, increments);
  return value == (int64_t)increments ? 0 : 1;
}
