/* The guest's memory hog: fills far more memory than the guest has, so the
 * kernel swaps, then checks that every page reads back what was written.
 *
 *   hog MIB [SEED]
 *
 * Every 4 KiB page gets content chosen by its index and the seed, so a run is
 * reproducible and no two pages hold the same bytes (except zero pages): a
 * device that returns another page's data, an older version or zeros is
 * caught, not just one that returns errors. Four kinds, mixed page by page:
 *
 *   random       xorshift64 from a per-page seed: does not compress at all
 *   same-filled  one 8-byte word repeated (sometimes zero)
 *   structured   text and pointer-like words: compresses well
 *   half-random  2 KiB random, 2 KiB zero: compresses to about half
 *
 * It writes every page in order, then verifies every page twice: forward,
 * then blocks of 32 pages in a scattered order, each block backwards, so the
 * second pass faults pages in far from where the first left off and against
 * the direction of swap readahead.
 *
 * Output (one line each, on stdout):
 *   HOG START pages=N seed=S
 *   HOG TIME fill=SEC verify1=SEC verify2=SEC total=SEC
 *   HOG PASS pages=N            or   HOG FAIL bad=K first=IDX ...
 * (bad counts failed page checks over both passes; first is the first bad index.)
 * Exit status 0 on PASS, 1 on FAIL, 2 on a usage or allocation error.
 * HOG_FLIP=IDX in the environment flips a bit of page IDX after the fill (a
 * self-test of the checker).
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#define PAGE 4096
#define WORDS (PAGE / 8)
#define BLOCK 32 /* pages per block of the second pass */

enum { RANDOM, SAME, STRUCTURED, HALF_RANDOM, KINDS };
static const char *kind_name[KINDS] = {"random", "same", "structured", "half-random"};

static uint64_t seed;

static uint64_t mix(uint64_t x) /* splitmix64's finaliser */
{
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

static uint64_t page_hash(uint64_t i) { return mix(seed * 0x100000001b3ULL ^ i); }

static int kind_of(uint64_t i) { return (int)(page_hash(i) % KINDS); }

static void fill_random(uint64_t *w, int n, uint64_t s)
{
    s |= 1; /* xorshift's state must not be zero */
    for (int k = 0; k < n; k++) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        w[k] = s;
    }
}

static const char text[] =
    "The swap device is trusted with data that exists nowhere else: a read returns the last write. ";

static void fill(uint64_t *w, uint64_t i)
{
    uint64_t h = page_hash(i);
    switch (kind_of(i)) {
    case RANDOM:
        fill_random(w, WORDS, mix(h));
        break;
    case SAME: {
        uint64_t v = (h >> 8) % 8 == 0 ? 0 : mix(h ^ 0x5a5a);
        for (int k = 0; k < WORDS; k++)
            w[k] = v;
        break;
    }
    case STRUCTURED: {
        /* first half text, second half a struct array of pointers and small ints */
        char *c = (char *)w;
        for (int k = 0; k < PAGE / 2; k++)
            c[k] = text[(k + i) % (sizeof text - 1)];
        memcpy(c, &i, sizeof i); /* unique per page */
        uint64_t base = 0x00007f0000000000ULL | ((h & 0xffffff) << 12);
        for (int k = WORDS / 2; k < WORDS; k += 2) {
            w[k] = base + (uint64_t)k * 16;
            w[k + 1] = (uint64_t)(k & 7) | (i << 32);
        }
        break;
    }
    case HALF_RANDOM:
        fill_random(w, WORDS / 2, mix(h ^ 0xa5a5));
        memset(w + WORDS / 2, 0, PAGE / 2);
        break;
    }
}

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static uint64_t gcd(uint64_t a, uint64_t b)
{
    while (b) {
        uint64_t t = a % b;
        a = b;
        b = t;
    }
    return a;
}

struct result {
    uint64_t bad;
    uint64_t first;
    uint64_t bad_kind[KINDS];
};

static void check(unsigned char *mem, uint64_t i, uint64_t *expect, struct result *r)
{
    fill(expect, i);
    if (memcmp(mem + i * PAGE, expect, PAGE) != 0) {
        if (r->bad == 0)
            r->first = i;
        r->bad++;
        r->bad_kind[kind_of(i)]++;
    }
}

int main(int argc, char **argv)
{
    if (argc < 2 || argc > 3) {
        fprintf(stderr, "usage: hog MIB [SEED]\n");
        return 2;
    }
    uint64_t n = strtoull(argv[1], NULL, 0) * (1024 * 1024 / PAGE);
    seed = argc > 2 ? strtoull(argv[2], NULL, 0) : 1;
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (n == 0) {
        fprintf(stderr, "hog: MIB must be positive\n");
        return 2;
    }
    unsigned char *mem = mmap(NULL, n * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) {
        perror("hog: mmap");
        return 2;
    }
    static uint64_t expect[WORDS];
    uint64_t kinds[KINDS] = {0};
    for (uint64_t i = 0; i < n; i++)
        kinds[kind_of(i)]++;
    printf("HOG START pages=%llu seed=%llu random=%llu same=%llu structured=%llu half-random=%llu\n",
           (unsigned long long)n, (unsigned long long)seed, (unsigned long long)kinds[RANDOM],
           (unsigned long long)kinds[SAME], (unsigned long long)kinds[STRUCTURED],
           (unsigned long long)kinds[HALF_RANDOM]);

    double t0 = now();
    for (uint64_t i = 0; i < n; i++)
        fill((uint64_t *)(mem + i * PAGE), i);
    double t1 = now();
    /* HOG_FLIP=IDX corrupts one byte of page IDX: proves the checker catches a wrong page */
    const char *flip = getenv("HOG_FLIP");
    if (flip && strtoull(flip, NULL, 0) < n)
        mem[strtoull(flip, NULL, 0) * PAGE + 100] ^= 1;

    struct result r1 = {0}, r2 = {0};
    for (uint64_t i = 0; i < n; i++)
        check(mem, i, expect, &r1);
    double t2 = now();

    /* Blocks of BLOCK pages in a scattered order (j -> (a*j + b) mod blocks, a coprime to blocks, visits
     * each once), each block backwards. Page by page at random would be a fault per page, each a round
     * trip through the emulated disk: three times the time for no more coverage. */
    uint64_t blocks = (n + BLOCK - 1) / BLOCK;
    uint64_t a = blocks * 5 / 8 + 1, b = blocks / 3;
    while (gcd(a, blocks) != 1)
        a++;
    for (uint64_t j = 0; j < blocks; j++) {
        uint64_t first = (a * j + b) % blocks * BLOCK;
        for (uint64_t i = first + BLOCK; i-- > first;)
            if (i < n)
                check(mem, i, expect, &r2);
    }
    double t3 = now();

    printf("HOG TIME fill=%.3f verify1=%.3f verify2=%.3f total=%.3f\n", t1 - t0, t2 - t1, t3 - t2, t3 - t0);
    if (r1.bad == 0 && r2.bad == 0) {
        printf("HOG PASS pages=%llu\n", (unsigned long long)n);
        return 0;
    }
    struct result *r = r1.bad ? &r1 : &r2;
    printf("HOG FAIL bad=%llu first=%llu pass1=%llu pass2=%llu kind=%s random=%llu same=%llu structured=%llu "
           "half-random=%llu\n",
           (unsigned long long)(r1.bad + r2.bad), (unsigned long long)r->first,
           (unsigned long long)r1.bad, (unsigned long long)r2.bad, kind_name[kind_of(r->first)],
           (unsigned long long)(r1.bad_kind[RANDOM] + r2.bad_kind[RANDOM]),
           (unsigned long long)(r1.bad_kind[SAME] + r2.bad_kind[SAME]),
           (unsigned long long)(r1.bad_kind[STRUCTURED] + r2.bad_kind[STRUCTURED]),
           (unsigned long long)(r1.bad_kind[HALF_RANDOM] + r2.bad_kind[HALF_RANDOM]));
    return 1;
}
