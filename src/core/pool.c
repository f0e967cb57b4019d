/*
 * pool.c - the CPU thread pool: a parallel-for over task indices.
 *
 * Workers sleep on a condition variable between runs, and the caller while
 * the last tasks of a run finish, after polling for spin_us
 * (moe_context_options; 1 ms by default): a layer forward runs several
 * short parallel phases back to back (decode phases take tens of
 * microseconds), and waking a sleeping thread costs about as much, or far
 * more on a loaded VM. spin_us = -1: no thread of the pool sleeps while it
 * lives.
 *
 * A run is over when its tasks are done, not when every worker has looked
 * at it: a worker that wakes late (waking a sleeping thread took ~0.5 ms on
 * a loaded 2-vCPU VM, longer than a whole 1-token phase) finds the tasks
 * taken and does not hold the caller. Tasks are handed out in increasing
 * order from one 64-bit ticket, (run << 32) | next task: a worker claims a
 * task by advancing the ticket of the run it woke for, so a worker still
 * looking at an old run cannot take a task of a newer one.
 */
#include "internal.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <time.h>
#include <unistd.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define cpu_relax() _mm_pause()
#else
#define cpu_relax() ((void)0)
#endif

enum { SPIN_DEFAULT_US = 1000 };

/* Tasks of one run: the ticket's low 32 bits count them; all ones is a
 * closed run (see moe__pool_run). */
#define RUN_MAX_TASKS ((int64_t)0x7fffffff)
#define RUN_CLOSED    ((uint64_t)0xffffffff)

struct moe__pool {
    int              n_threads;        /* including the caller                      */
    int64_t          spin_ns;          /* a thread's polling before it sleeps; < 0: never */
    pthread_t       *threads;          /* (n_threads - 1) workers                   */
    pthread_mutex_t  mu;
    pthread_cond_t   cv_start, cv_done;
    atomic_uint_fast64_t ticket;       /* (run << 32) | next task to hand out        */
    atomic_bool      stop;
    /* The current run: set before its ticket is published, read by a worker
     * only after it claimed one of its tasks (the run cannot end before that
     * task does, so they stay valid). */
    moe__task_fn     fn;
    void            *arg;
    atomic_int_fast64_t n_tasks;       /* (atomic: a late worker reads it unclaimed)  */
    atomic_int_fast64_t done;          /* tasks of the current run finished          */
    atomic_int       waiting;          /* the caller sleeps on cv_done               */
};

typedef struct worker_arg {
    moe__pool *p;
    int        thread;
} worker_arg;

static uint32_t run_of(uint64_t ticket) { return (uint32_t)(ticket >> 32); }

static int64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

/* One pause of a thread polling since t0 (spins: pauses so far); true once
 * it has polled for the pool's spin time (the clock read every 256 pauses),
 * never with spin_us = -1. */
static bool poll_over(const moe__pool *p, int64_t t0, unsigned spins) {
    cpu_relax();
    return spins % 256 == 0 && p->spin_ns >= 0 && now_ns() - t0 >= p->spin_ns;
}

/* Runs tasks of run `run` until none is left. */
static void run_tasks(moe__pool *p, uint32_t run, int thread) {
    uint64_t cur = atomic_load_explicit(&p->ticket, memory_order_acquire);
    for (;;) {
        /* n_tasks may already be a newer run's: then the ticket moved on
         * too, and the claim below fails */
        const int64_t n = atomic_load_explicit(&p->n_tasks, memory_order_acquire);
        if (run_of(cur) != run || (int64_t)(uint32_t)cur >= n) break;
        if (!atomic_compare_exchange_weak_explicit(&p->ticket, &cur, cur + 1,
                                                   memory_order_acq_rel, memory_order_acquire))
            continue; // cur reloaded
        p->fn(p->arg, (int64_t)(uint32_t)cur, thread);
        /* seq_cst, against the caller's store to waiting then load of done */
        if (atomic_fetch_add(&p->done, 1) + 1 == n && atomic_load(&p->waiting)) {
            pthread_mutex_lock(&p->mu);
            pthread_cond_broadcast(&p->cv_done);
            pthread_mutex_unlock(&p->mu);
        }
        cur = atomic_load_explicit(&p->ticket, memory_order_acquire);
    }
}

static void *worker_main(void *varg) {
    worker_arg *wa     = varg;
    moe__pool  *p      = wa->p;
    int         thread = wa->thread;
    uint32_t    seen   = run_of(atomic_load(&p->ticket));
    for (;;) {
        const int64_t t0 = now_ns();
        for (unsigned spins = 1;
             run_of(atomic_load_explicit(&p->ticket, memory_order_acquire)) == seen &&
             !atomic_load(&p->stop) && !poll_over(p, t0, spins);
             spins++) {
        }
        /* The mutex only to sleep: the caller holds it while it publishes a
         * run, and a worker that saw the run while polling and then queued
         * on the mutex would be parked by the kernel and woken by the
         * caller's unlock (tens of microseconds on a VM, per phase). */
        if (run_of(atomic_load(&p->ticket)) == seen && !atomic_load(&p->stop)) {
            pthread_mutex_lock(&p->mu);
            while (run_of(atomic_load(&p->ticket)) == seen && !atomic_load(&p->stop))
                pthread_cond_wait(&p->cv_start, &p->mu);
            pthread_mutex_unlock(&p->mu);
        }
        if (atomic_load(&p->stop)) break;
        seen = run_of(atomic_load(&p->ticket));
        run_tasks(p, seen, thread);
    }
    moe__free(wa);
    return NULL;
}

moe_status moe__pool_create(int n_threads, int spin_us, moe__pool **out) {
    if (n_threads <= 0) n_threads = moe_cpu_count();
    moe__pool *p = moe__calloc(1, sizeof *p);
    if (!p) return MOE_ERR_NOMEM;
    p->n_threads = 1;
    p->spin_ns   = spin_us < 0 ? -1 : (int64_t)(spin_us ? spin_us : SPIN_DEFAULT_US) * 1000;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv_start, NULL);
    pthread_cond_init(&p->cv_done, NULL);
    if (n_threads > 1) {
        p->threads = moe__calloc((size_t)n_threads - 1, sizeof *p->threads);
        if (!p->threads) goto fail;
        for (int i = 1; i < n_threads; i++) {
            worker_arg *wa = moe__malloc(sizeof *wa);
            if (!wa) goto fail;
            *wa = (worker_arg){ p, i };
            if (pthread_create(&p->threads[i - 1], NULL, worker_main, wa)) {
                moe__free(wa);
                goto fail;
            }
            p->n_threads++;
        }
    }
    *out = p;
    return MOE_OK;
fail:
    moe__pool_destroy(p);
    return MOE_ERR_NOMEM;
}

void moe__pool_destroy(moe__pool *p) {
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    atomic_store(&p->stop, true);
    pthread_cond_broadcast(&p->cv_start);
    pthread_mutex_unlock(&p->mu);
    for (int i = 0; i < p->n_threads - 1; i++) pthread_join(p->threads[i], NULL);
    moe__free(p->threads);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv_start);
    pthread_cond_destroy(&p->cv_done);
    moe__free(p);
}

int moe__pool_n_threads(const moe__pool *p) { return p ? p->n_threads : 1; }

/* Task t + base of fn, for runs longer than a ticket counts. */
typedef struct offset_run {
    moe__task_fn fn;
    void        *arg;
    int64_t      base;
} offset_run;

static void offset_task(void *arg, int64_t t, int thread) {
    const offset_run *o = arg;
    o->fn(o->arg, o->base + t, thread);
}

void moe__pool_run(moe__pool *p, int64_t n_tasks, moe__task_fn fn, void *arg) {
    if (n_tasks <= 0) return;
    if (!p || p->n_threads == 1 || n_tasks == 1) {
        for (int64_t t = 0; t < n_tasks; t++) fn(arg, t, 0);
        return;
    }
    if (n_tasks > RUN_MAX_TASKS) { // in order, RUN_MAX_TASKS at a time
        for (int64_t b = 0; b < n_tasks; b += RUN_MAX_TASKS) {
            offset_run o = { fn, arg, b };
            moe__pool_run(p, n_tasks - b < RUN_MAX_TASKS ? n_tasks - b : RUN_MAX_TASKS,
                          offset_task, &o);
        }
        return;
    }
    /* The previous run is over (all its tasks done), but a worker may still
     * hold its exhausted ticket and read a larger n_tasks below: the ticket
     * is closed first, so that claim fails. No worker reads the fields
     * until it claims a task of the new run. */
    const uint64_t old = atomic_load(&p->ticket);
    atomic_store(&p->ticket, old | RUN_CLOSED);
    p->fn  = fn;
    p->arg = arg;
    atomic_store(&p->done, 0);
    atomic_store_explicit(&p->n_tasks, n_tasks, memory_order_release);
    const uint32_t run = run_of(old) + 1;
    pthread_mutex_lock(&p->mu);
    atomic_store_explicit(&p->ticket, (uint64_t)run << 32, memory_order_release);
    pthread_cond_broadcast(&p->cv_start);
    pthread_mutex_unlock(&p->mu);

    run_tasks(p, run, 0);

    const int64_t t0 = now_ns();
    for (unsigned spins = 1; atomic_load_explicit(&p->done, memory_order_acquire) < n_tasks &&
                             !poll_over(p, t0, spins);
         spins++) {
    }
    if (atomic_load_explicit(&p->done, memory_order_acquire) < n_tasks) {
        pthread_mutex_lock(&p->mu);
        atomic_store(&p->waiting, 1);
        while (atomic_load(&p->done) < n_tasks) pthread_cond_wait(&p->cv_done, &p->mu);
        atomic_store(&p->waiting, 0);
        pthread_mutex_unlock(&p->mu);
    }
}
