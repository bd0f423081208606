/*
 * pool.c — a fixed thread pool running one parallel-for at a time.
 *
 * DESIGN
 *   Threads are created once per merge. alloy_pool_for publishes a job
 *   (fn, ctx, n) under a mutex, bumps a generation counter and wakes the
 *   workers; items are claimed with an atomic counter so uneven items
 *   balance themselves. The caller works too (as thread 0) and waits until
 *   every worker has finished the generation. Jobs are not reentrant.
 */
#include "core/internal.h"

#include <pthread.h>
#include <stdatomic.h>
#include <unistd.h>

struct alloy_pool {
    int nthreads;
    pthread_t *threads;
    pthread_mutex_t mu;
    pthread_cond_t wake, done;
    unsigned long generation;
    int busy;    /* workers still inside the current generation */
    int stop;
    void (*fn)(void *ctx, size_t item, int ith);
    void *ctx;
    size_t n;
    atomic_size_t next;
    void **scratch;        /* per thread, grow-only, freed with the pool */
    size_t *scratch_size;
};

struct worker_arg {
    struct alloy_pool *p;
    int ith;
};

static void run_items(struct alloy_pool *p, int ith)
{
    for (;;) {
        size_t i = atomic_fetch_add(&p->next, 1);
        if (i >= p->n) break;
        p->fn(p->ctx, i, ith);
    }
}

static void *worker_main(void *arg)
{
    struct worker_arg wa = *(struct worker_arg *)arg;
    free(arg);
    struct alloy_pool *p = wa.p;
    unsigned long seen = 0;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (!p->stop && p->generation == seen) pthread_cond_wait(&p->wake, &p->mu);
        if (p->stop) break;
        seen = p->generation;
        pthread_mutex_unlock(&p->mu);
        run_items(p, wa.ith);
        pthread_mutex_lock(&p->mu);
        if (--p->busy == 0) pthread_cond_signal(&p->done);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

int alloy_cpu_count(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

struct alloy_pool *alloy_pool_new(int nthreads)
{
    if (nthreads <= 0) nthreads = alloy_cpu_count();
    if (nthreads > 256) nthreads = 256;
    struct alloy_pool *p = alloy_xcalloc(1, sizeof *p);
    if (!p) return NULL;
    p->nthreads = nthreads;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->wake, NULL);
    pthread_cond_init(&p->done, NULL);
    if (nthreads > 1) {
        p->threads = alloy_xcalloc((size_t)nthreads - 1, sizeof *p->threads);
        if (!p->threads) { alloy_pool_free(p); return NULL; }
        for (int i = 1; i < nthreads; i++) {
            struct worker_arg *wa = alloy_xmalloc(sizeof *wa);
            if (wa) *wa = (struct worker_arg){p, i};
            if (!wa || pthread_create(&p->threads[i - 1], NULL, worker_main, wa) != 0) {
                free(wa);
                p->nthreads = i; /* only i-1 workers exist */
                alloy_pool_free(p);
                return NULL;
            }
        }
    }
    return p;
}

void alloy_pool_free(struct alloy_pool *p)
{
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    p->stop = 1;
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    for (int i = 1; i < p->nthreads; i++) pthread_join(p->threads[i - 1], NULL);
    free(p->threads);
    for (int i = 0; p->scratch && i < p->nthreads; i++) free(p->scratch[i]);
    free(p->scratch);
    free(p->scratch_size);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->wake);
    pthread_cond_destroy(&p->done);
    free(p);
}

int alloy_pool_size(const struct alloy_pool *p) { return p ? p->nthreads : 1; }

void alloy_pool_for(struct alloy_pool *p, size_t n, void (*fn)(void *ctx, size_t item, int ith), void *ctx)
{
    if (!p || p->nthreads == 1 || n <= 1) {
        for (size_t i = 0; i < n; i++) fn(ctx, i, 0);
        return;
    }
    pthread_mutex_lock(&p->mu);
    p->fn = fn;
    p->ctx = ctx;
    p->n = n;
    atomic_store(&p->next, 0);
    p->busy = p->nthreads - 1;
    p->generation++;
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    run_items(p, 0);
    pthread_mutex_lock(&p->mu);
    while (p->busy > 0) pthread_cond_wait(&p->done, &p->mu);
    pthread_mutex_unlock(&p->mu);
}

void *alloy_pool_scratch(struct alloy_pool *p, int ith, size_t bytes)
{
    if (!p->scratch) {
        p->scratch = alloy_xcalloc((size_t)p->nthreads, sizeof *p->scratch);
        p->scratch_size = alloy_xcalloc((size_t)p->nthreads, sizeof *p->scratch_size);
        if (!p->scratch || !p->scratch_size) {
            free(p->scratch);
            free(p->scratch_size);
            p->scratch = NULL;
            p->scratch_size = NULL;
            return NULL;
        }
    }
    if (ith < 0 || ith >= p->nthreads) return NULL;
    if (p->scratch_size[ith] < bytes) {
        void *nb = alloy_xmalloc(bytes);
        if (!nb) return NULL;
        free(p->scratch[ith]);
        p->scratch[ith] = nb;
        p->scratch_size[ith] = bytes;
    }
    return p->scratch[ith];
}
