/*
 * pool.c - the CPU thread pool: a parallel-for over task indices.
 *
 * Workers sleep on a condition variable between runs, after spinning briefly:
 * a layer forward runs several short parallel phases back to back (decode
 * phases take tens of microseconds), and waking a sleeping thread costs about
 * as much. Tasks are handed out by an atomic counter in increasing order.
 */
#include "internal.h"

#include <pthread.h>
#include <stdatomic.h>
#include <unistd.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define cpu_relax() _mm_pause()
#else
#define cpu_relax() ((void)0)
#endif

enum { SPIN_ITERS = 20000 };

struct moe__pool {
    int              n_threads;        /* including the caller                     */
    pthread_t       *threads;          /* (n_threads - 1) workers                  */
    pthread_mutex_t  mu;
    pthread_cond_t   cv_start, cv_done;
    atomic_uint_fast64_t generation;   /* bumped once per run                      */
    atomic_bool      stop;
    /* The current run. */
    moe__task_fn     fn;
    void            *arg;
    int64_t          n_tasks;
    atomic_int_fast64_t next;          /* next task index to hand out              */
    atomic_int       active;           /* workers still inside the current run     */
};

typedef struct worker_arg {
    moe__pool *p;
    int        thread;
} worker_arg;

static void run_tasks(moe__pool *p, int thread) {
    for (;;) {
        int64_t t = atomic_fetch_add_explicit(&p->next, 1, memory_order_relaxed);
        if (t >= p->n_tasks) break;
        p->fn(p->arg, t, thread);
    }
}

static void *worker_main(void *varg) {
    worker_arg *wa     = varg;
    moe__pool  *p      = wa->p;
    int         thread = wa->thread;
    uint64_t    seen   = 0;
    for (;;) {
        int spins = 0;
        while (atomic_load_explicit(&p->generation, memory_order_acquire) == seen &&
               !atomic_load(&p->stop) && spins < SPIN_ITERS) {
            cpu_relax();
            spins++;
        }
        pthread_mutex_lock(&p->mu);
        while (atomic_load(&p->generation) == seen && !atomic_load(&p->stop))
            pthread_cond_wait(&p->cv_start, &p->mu);
        pthread_mutex_unlock(&p->mu);
        if (atomic_load(&p->stop)) break;
        seen = atomic_load(&p->generation);
        run_tasks(p, thread);
        if (atomic_fetch_sub(&p->active, 1) == 1) {
            pthread_mutex_lock(&p->mu);
            pthread_cond_broadcast(&p->cv_done);
            pthread_mutex_unlock(&p->mu);
        }
    }
    moe__free(wa);
    return NULL;
}

moe_status moe__pool_create(int n_threads, moe__pool **out) {
    if (n_threads <= 0) n_threads = moe_cpu_count();
    moe__pool *p = moe__calloc(1, sizeof *p);
    if (!p) return MOE_ERR_NOMEM;
    p->n_threads = 1;
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

void moe__pool_run(moe__pool *p, int64_t n_tasks, moe__task_fn fn, void *arg) {
    if (n_tasks <= 0) return;
    if (!p || p->n_threads == 1 || n_tasks == 1) {
        for (int64_t t = 0; t < n_tasks; t++) fn(arg, t, 0);
        return;
    }
    p->fn      = fn;
    p->arg     = arg;
    p->n_tasks = n_tasks;
    atomic_store(&p->next, 0);
    atomic_store(&p->active, p->n_threads - 1);
    pthread_mutex_lock(&p->mu);
    atomic_fetch_add_explicit(&p->generation, 1, memory_order_release);
    pthread_cond_broadcast(&p->cv_start);
    pthread_mutex_unlock(&p->mu);

    run_tasks(p, 0);

    int spins = 0;
    while (atomic_load_explicit(&p->active, memory_order_acquire) > 0 && spins < SPIN_ITERS) {
        cpu_relax();
        spins++;
    }
    pthread_mutex_lock(&p->mu);
    while (atomic_load(&p->active) > 0) pthread_cond_wait(&p->cv_done, &p->mu);
    pthread_mutex_unlock(&p->mu);
}
