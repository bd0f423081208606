/*
 * evaluator.c — the public evaluation API (alloy.h): an evaluator over any
 * struct alloy_model, and the small helpers `alloy eval` needs.
 *
 * DESIGN
 *   An evaluator is the float32 Llama model built from the alloy_model's
 *   config.json text and tensors (llama.c), the model's folder (where its
 *   tokenizer.json lives, also for a model merged in memory) and, once text
 *   is scored, the tokenizer. A GGUF model has no tokenizer.json: the one
 *   rebuilt from its metadata (or why it cannot be) is kept instead. Scoring
 *   is eval.c's windowed driver. Nothing here prints or exits.
 */
#include "eval/eval.h"
#include "core/internal.h"
#include "formats/formats.h"

#include <unistd.h>

struct alloy_evaluator {
    struct alloy_llama *llama;
    struct alloy_eval_info info;
    char *dir;
    struct alloy_tokenizer *tok; /* loaded by the first alloy_evaluate_text */
    char *tok_text;              /* a GGUF model's rebuilt tokenizer.json */
    int tok_failed;              /* a GGUF model whose tokenizer cannot be rebuilt: tok_err says why */
    struct alloy_err tok_err;
};

static void fill_info(const struct alloy_llama_config *c, struct alloy_eval_info *info)
{
    memset(info, 0, sizeof *info);
    snprintf(info->model_type, sizeof info->model_type, "%s", c->model_type);
    info->vocab_size = c->vocab_size;
    info->max_positions = c->max_position_embeddings;
    info->default_ctx = alloy_eval_default_ctx(c);
    info->bos_token_id = c->bos_token_id;
}

int alloy_eval_check(const struct alloy_model *m, struct alloy_eval_info *info, struct alloy_err *err)
{
    struct alloy_llama_config c;
    int rc = alloy_llama_config_of(m, &c, err);
    if (!rc) fill_info(&c, info);
    return rc;
}

int alloy_evaluator_new(const struct alloy_model *m, struct alloy_evaluator **out, struct alloy_err *err)
{
    struct alloy_evaluator *ev = alloy_xcalloc(1, sizeof *ev);
    if (!ev || !(ev->dir = alloy_xstrdup(alloy_model_dir(m)))) {
        free(ev);
        return alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
    }
    int rc = alloy_model_gguf_tokenizer(m, &ev->tok_text, &ev->tok_err); /* kept: m may be closed before use */
    if (rc) ev->tok_failed = 1;
    rc = alloy_llama_new(m, &ev->llama, err);
    if (rc) {
        alloy_evaluator_free(ev);
        return rc;
    }
    fill_info(alloy_llama_cfg(ev->llama), &ev->info);
    *out = ev;
    return ALLOY_OK;
}

void alloy_evaluator_free(struct alloy_evaluator *ev)
{
    if (!ev) return;
    alloy_llama_close(ev->llama);
    alloy_tokenizer_free(ev->tok);
    free(ev->tok_text);
    free(ev->dir);
    free(ev);
}

const struct alloy_eval_info *alloy_evaluator_info(const struct alloy_evaluator *ev) { return &ev->info; }

int alloy_evaluate_ids(const struct alloy_evaluator *ev, const int32_t *ids, size_t n, const char *label,
                       const struct alloy_eval_options *o, struct alloy_eval_result *r, struct alloy_err *err)
{
    struct alloy_eval_options def;
    if (!o) {
        alloy_eval_options_init(&def);
        o = &def;
    }
    return alloy_eval_ids(ev->llama, ids, n, label ? label : "<ids>", o, r, err);
}

/* A folder's tokenizer.json (the model-folder trust rule applies); a folder with only SentencePiece's
 * tokenizer.model gets an error that says so and how to evaluate it. */
static int folder_tokenizer(const char *dir, struct alloy_tokenizer **out, struct alloy_err *err)
{
    char *path = NULL, *spm = NULL;
    int rc = alloy_folder_file(dir, "tokenizer.json", &path, err);
    if (!rc && access(path, F_OK) != 0 && !(rc = alloy_folder_file(dir, "tokenizer.model", &spm, err)) &&
        access(spm, R_OK) == 0)
        rc = alloy_err_set(err, ALLOY_ERR_UNSUPPORTED, "%s: the tokenizer.json alloy eval runs, found only "
                           "tokenizer.model (SentencePiece; `alloy convert` the folder to a .gguf and evaluate that)",
                           path);
    else if (!rc) rc = alloy_tokenizer_load(path, out, err);
    free(spm);
    free(path);
    return rc;
}

int alloy_evaluate_text(struct alloy_evaluator *ev, const char *text, size_t len, const char *label,
                        const struct alloy_eval_options *o, struct alloy_eval_result *r, struct alloy_err *err)
{
    if (!label) label = "<text>";
    if (!ev->tok) {
        int rc;
        if (ev->tok_failed) {
            *err = ev->tok_err;
            return err->status;
        }
        if (ev->tok_text) {
            rc = alloy_tokenizer_parse(ev->tok_text, ev->dir, &ev->tok, err);
        } else {
            rc = folder_tokenizer(ev->dir, &ev->tok, err);
        }
        if (rc) return rc;
    }
    int32_t *ids = NULL;
    size_t n = 0;
    int rc = alloy_tokenizer_encode(ev->tok, text, len, label, &ids, &n, err);
    if (!rc) rc = alloy_evaluate_ids(ev, ids, n, label, o, r, err);
    free(ids);
    return rc;
}

int alloy_eval_read_text(const char *path, char **text, size_t *len, struct alloy_err *err)
{
    return alloy_read_file(path, 0, text, len, err);
}

#ifdef ALLOY_HAVE_OPENBLAS
/* Weak: only OpenBLAS's pthread build has it. */
int blas_thread_shutdown_(void) __attribute__((weak));
#endif

/* OpenBLAS's pthread build starts its worker threads when the library loads, and they spin on
 * sched_yield for 2^28 cycles (about 0.1 s of a core) before they sleep: 3-5% of a one-second merge
 * on two cores, taken from the merge threads. Merges use no BLAS and eval runs it single-threaded,
 * so the CLI stops them at once (OpenBLAS starts them again if a call ever needs them). */
void alloy_blas_idle(void)
{
#ifdef ALLOY_HAVE_OPENBLAS
    if (blas_thread_shutdown_) blas_thread_shutdown_();
#endif
}

int alloy_model_tokenizer(const struct alloy_model *m, struct alloy_tokenizer **out, struct alloy_err *err)
{
    char *text = NULL;
    int rc = alloy_model_gguf_tokenizer(m, &text, err);
    if (!rc && text) rc = alloy_tokenizer_parse(text, alloy_model_dir(m), out, err);
    else if (!rc) rc = folder_tokenizer(alloy_model_dir(m), out, err);
    free(text);
    return rc;
}
