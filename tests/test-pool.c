/*
 * test-pool.c - the CPU thread pool (src/core/pool.c): every task of a run
 * runs exactly once, with that run's function argument, and the run returns
 * only when all are done, also when workers wake late (the caller pauses
 * between runs so that they fall asleep) or finish late (a worker's task
 * outlasts the caller's spin, so that it sleeps on the condition variable),
 * with workers that poll for the default time, forever, or 1 us; and the
 * context's spin_us option.
 */
#include "test.h"

#include "internal.h"

#include <stdatomic.h>
#include <string.h>
#include <time.h>

typedef struct pool_run {
    int64_t     n_tasks;
    int         slow;           /* a worker's task that outlasts the caller's spin */
    atomic_int *hits;           /* (n_tasks) */
    atomic_int  wrong_arg;      /* a task saw another run's argument */
} pool_run;

static _Atomic(const pool_run *) g_current;

static void sleep_us(long us) {
    struct timespec ts = { us / 1000000, (us % 1000000) * 1000 };
    nanosleep(&ts, NULL);
}

static void pool_task(void *arg, int64_t t, int thread) {
    pool_run *r = arg;
    if (r != g_current || t < 0 || t >= r->n_tasks) {
        atomic_fetch_add(&r->wrong_arg, 1);
        return;
    }
    atomic_fetch_add(&r->hits[t], 1);
    if (r->slow && thread != 0) sleep_us(3000);
}

TEST(pool_runs_every_task_once) {
    atomic_int hits[40];
    /* workers that poll 1 ms (the default), never sleep, or sleep at once */
    static const int spins[] = { 0, -1, 1 };
    for (int n_threads = 2; n_threads <= 3; n_threads++)
        for (int si = 0; si < 3; si++) {
            moe__pool *p = NULL;
            REQUIRE(moe__pool_create(n_threads, spins[si], &p) == MOE_OK, "pool of %d",
                    n_threads);
            CHECK(moe__pool_n_threads(p) == n_threads, "%d threads", moe__pool_n_threads(p));
            int bad = 0;
            /* 600 runs with pauses and slow tasks, then many back to back (a
             * worker finishing one run while the caller starts the next) */
            const int n_runs = si == 0 ? 100600 : 20600;
            for (int r = 0; r < n_runs && bad < 5; r++) {
                const int paced = r < 600;
                pool_run run = { 1 + r % 37, paced && r % 50 == 7, hits, 0 };
                for (int64_t i = 0; i < run.n_tasks; i++) atomic_store(&hits[i], 0);
                g_current = &run;
                moe__pool_run(p, run.n_tasks, pool_task, &run);
                g_current = NULL;
                for (int64_t i = 0; i < run.n_tasks; i++)
                    if (atomic_load(&hits[i]) != 1) {
                        CHECK(0, "%d threads, spin %d, run %d: task %lld ran %d times",
                              n_threads, spins[si], r, (long long)i, atomic_load(&hits[i]));
                        bad++;
                    }
                CHECK(atomic_load(&run.wrong_arg) == 0, "%d threads, spin %d, run %d: a task "
                      "of another run", n_threads, spins[si], r);
                if (paced && r % 4 == 0) sleep_us(2000); // the workers stop polling and sleep
            }
            moe__pool_destroy(p);
        }
}

TEST(context_spin_option) {
    moe_context *c = NULL;
    char         err[160] = "";
    moe_context_options o = { .n_threads = 2, .spin_us = -2 };
    CHECK(moe_context_create(&o, &c, err, sizeof err) == MOE_ERR_INVALID_ARG && !c,
          "spin_us -2 accepted");
    CHECK(strstr(err, "spin_us -2") != NULL, "message: %s", err);
    o.spin_us = 10000001;
    CHECK(moe_context_create(&o, &c, err, sizeof err) == MOE_ERR_INVALID_ARG && !c,
          "spin_us 10000001 accepted");
    o.spin_us = -1;
    REQUIRE(moe_context_create(&o, &c, err, sizeof err) == MOE_OK, "%s", err);
    CHECK(moe_context_n_threads(c) == 2, "%d threads", moe_context_n_threads(c));
    moe_context_destroy(c); // joins workers that never sleep
}
