/*
 * shards.c — the output's shards: tensors in plan order, a new shard when
 * the next tensor would pass the size limit (a tensor larger than the
 * limit gets a shard of its own), each tensor's byte offset in its shard,
 * and the file names (model.safetensors, or model-0000i-of-0000N.safetensors).
 */
#include "core/internal.h"
#include "formats/formats.h"
#include "plan/plan.h"

int alloy_plan_assign_shards(struct alloy_plan *p, uint64_t shard_size, struct alloy_err *err)
{
    uint64_t max = shard_size ? shard_size : 5000000000ull;
    size_t cap = 0;
    uint64_t cur = 0;
    for (size_t i = 0; i < p->ntensors; i++) {
        struct alloy_plan_tensor *t = &p->tensors[i];
        if (p->nshards == 0 || (cur > 0 && cur + t->nbytes > max)) {
            if (p->nshards == cap) {
                cap = cap ? cap * 2 : 8;
                struct alloy_plan_shard *ns = alloy_xrealloc(p->shards, cap * sizeof *ns);
                if (!ns) return alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
                p->shards = ns;
            }
            p->shards[p->nshards] = (struct alloy_plan_shard){.first = i};
            p->nshards++;
            cur = 0;
        }
        struct alloy_plan_shard *s = &p->shards[p->nshards - 1];
        t->shard = (int)(p->nshards - 1);
        t->offset = cur;
        cur += t->nbytes;
        s->count++;
        s->data_bytes = cur;
        p->total_bytes += t->nbytes;
    }
    for (size_t s = 0; s < p->nshards; s++) {
        p->shards[s].file = p->nshards == 1 ? alloy_xstrdup("model.safetensors")
                                            : alloy_xasprintf("model-%05zu-of-%05zu.safetensors", s + 1, p->nshards);
        if (!p->shards[s].file) return alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
    }
    return ALLOY_OK;
}

uint8_t *alloy_plan_shard_header(const struct alloy_plan *p, size_t si, size_t *len)
{
    const struct alloy_plan_shard *s = &p->shards[si];
    struct alloy_tensor_desc *d = alloy_xcalloc(s->count ? s->count : 1, sizeof *d);
    if (!d) return NULL;
    for (size_t i = 0; i < s->count; i++) {
        const struct alloy_plan_tensor *t = &p->tensors[s->first + i];
        d[i] = (struct alloy_tensor_desc){t->name, t->dtype, t->ndim, t->shape, t->offset, t->nbytes};
    }
    uint8_t *hdr = alloy_st_header(d, s->count, len);
    free(d);
    return hdr;
}
