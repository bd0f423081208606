/*
 * test_examples.c — every config under examples/ merges end to end with the
 * bundled models, and the result is a loadable model folder whose float
 * tensors are all finite, with the tensor count the config implies.
 */
#include "test.h"
#include "alloy.h"

#include <dirent.h>
#include <stdint.h>
#include <stdlib.h>

static int all_finite(const struct alloy_tensor *t)
{
    const struct alloy_dtype_traits *tr = alloy_dtype_traits(t->dtype);
    if (!tr->mergeable) return 1;
    float buf[1024];
    size_t esize = tr->bits / 8;
    for (uint64_t e = 0; e < t->numel; e += 1024) {
        size_t n = t->numel - e < 1024 ? (size_t)(t->numel - e) : 1024;
        alloy_to_f32(t->dtype, t->data + e * esize, buf, n);
        for (size_t i = 0; i < n; i++)
            if (!isfinite(buf[i])) return 0;
    }
    return 1;
}

TEST(examples_all_merge)
{
    DIR *d = opendir("examples");
    CHECK(d != NULL);
    if (!d) return;
    struct dirent *e;
    int count = 0;
    while ((e = readdir(d))) {
        size_t len = strlen(e->d_name);
        if (len < 5 || strcmp(e->d_name + len - 4, ".yml") != 0) continue;
        char out[600], cmd[1400], *log = NULL;
        snprintf(out, sizeof out, "%s/out", test_tmpdir());
        snprintf(cmd, sizeof cmd, "%s merge examples/%s %s --quiet --threads 2 --random-seed 7", test_alloy_bin(),
                 e->d_name, out);
        int rc = test_run(cmd, &log);
        CHECK_MSG(rc == 0, "examples/%s: exit %d: %s", e->d_name, rc, log ? log : "");
        free(log);
        if (rc) continue;
        count++;
        struct alloy_model *m = NULL;
        struct alloy_err err = {0};
        CHECK_MSG(alloy_model_open(out, &m, &err) == ALLOY_OK, "examples/%s: output does not load: %s", e->d_name,
                  err.msg);
        if (!m) continue;
        size_t n = alloy_model_count(m);
        /* 3 loose tensors + 9 per layer */
        CHECK_MSG(n >= 3 + 9 && (n - 3) % 9 == 0, "examples/%s: %zu tensors", e->d_name, n);
        for (size_t i = 0; i < n; i++)
            CHECK_MSG(all_finite(alloy_model_tensor(m, i)), "examples/%s: %s has NaN/Inf", e->d_name,
                      alloy_model_tensor(m, i)->name);
        alloy_model_close(m);
    }
    closedir(d);
    CHECK(count >= 3);
}
