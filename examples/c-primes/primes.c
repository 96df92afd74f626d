/*
 * Counts the primes below a bound on several Fabric threads. Each thread tests every
 * `thread_count`-th block of candidates and takes a context save after each block, so killing its
 * worker (or, on a cluster, its node) costs at most one block of work; the output stays the same.
 *
 *   npx fabric build examples/c-primes/primes.c
 *   npx fabric run examples/c-primes/primes.wasm -- 2000000 4 20000   (bound, threads, block)
 *
 * The same source compiles natively, where the threads run one after another (see fabric.h):
 *
 *   gcc -O2 -I guest-sdk/c examples/c-primes/primes.c -o primes && ./primes 2000000 4 20000
 *
 * Both print the same lines, so the two can be compared for speed and checked against each other.
 */

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "fabric.h"

#define BOUND_DEFAULT 2000000u
#define THREAD_COUNT_DEFAULT 4u
#define THREAD_COUNT_MAX 64u
/* Candidates a thread tests between two context saves, unless the third argument says otherwise. */
#define BLOCK_CANDIDATES_DEFAULT 20000u

/* What main hands each thread: which blocks of [0, bound) are its own. */
struct share {
  uint32_t bound;
  uint32_t block_candidates;
  uint32_t first_block;
  uint32_t block_stride;
};

static int is_prime(uint32_t candidate) {
  if (candidate < 2) return 0;
  if (candidate % 2 == 0) return candidate == 2;
  for (uint32_t divisor = 3; divisor * divisor <= candidate; divisor += 2) {
    if (candidate % divisor == 0) return 0;
  }
  return 1;
}

FABRIC_THREAD(count_primes) {
  struct share share;
  if (fabric_thread_arg(&share, sizeof share) != sizeof share) return; /* no result: main reports it */
  uint32_t count = 0;
  uint64_t block = share.first_block;
  for (;;) {
    uint64_t start = block * share.block_candidates;
    if (start >= share.bound) break;
    uint64_t end = start + share.block_candidates < share.bound ? start + share.block_candidates : share.bound;
    for (uint64_t candidate = start; candidate < end; candidate++) count += is_prime((uint32_t)candidate);
    fabric_checkpoint();
    block += share.block_stride;
  }
  fabric_set_result(&count, sizeof count);
}

static uint32_t argument(int argc, char **argv, int index, uint32_t fallback) {
  if (argc <= index) return fallback;
  char *end;
  unsigned long value = strtoul(argv[index], &end, 10);
  if (*end != 0 || value == 0 || value > UINT32_MAX) {
    fprintf(stderr, "primes: argument %d must be a whole number from 1 to %u, got \"%s\"\n", index,
            UINT32_MAX, argv[index]);
    exit(2);
  }
  return (uint32_t)value;
}

int main(int argc, char **argv) {
  uint32_t bound = argument(argc, argv, 1, BOUND_DEFAULT);
  uint32_t thread_count = argument(argc, argv, 2, THREAD_COUNT_DEFAULT);
  uint32_t block_candidates = argument(argc, argv, 3, BLOCK_CANDIDATES_DEFAULT);
  if (thread_count > THREAD_COUNT_MAX) {
    fprintf(stderr, "primes: at most %u threads, got %u\n", THREAD_COUNT_MAX, thread_count);
    return 2;
  }
  fabric_thread threads[THREAD_COUNT_MAX];
  for (uint32_t index = 0; index < thread_count; index++) {
    struct share share = {bound, block_candidates, index, thread_count};
    threads[index] = fabric_spawn("count_primes", &share, sizeof share);
    if (threads[index] < 0) {
      fprintf(stderr, "primes: could not start thread %u (error %d)\n", index, (int)threads[index]);
      return 1;
    }
  }
  uint32_t total = 0;
  for (uint32_t index = 0; index < thread_count; index++) {
    uint32_t count = 0;
    int32_t length = fabric_join(threads[index], &count, sizeof count);
    if (length != (int32_t)sizeof count) {
      fprintf(stderr, "primes: thread %u failed (join returned %d)\n", index, (int)length);
      return 1;
    }
    printf("thread %u: %u primes\n", index, count);
    total += count;
  }
  printf("total: %u primes below %u\n", total, bound);
  return 0;
}
