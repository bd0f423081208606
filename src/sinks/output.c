/*
 * output.c — the non-tensor files of an output model folder.
 *
 * DESIGN
 *   Written into the temporary folder after the shards, before the rename:
 *   - model.safetensors.index.json when there is more than one shard
 *     ({"metadata": {"total_size", "mergekit_version"}, "weight_map"});
 *   - config.json from the donor (base model, else the first model) with
 *     torch_dtype/dtype set to the output dtype and the layer count updated
 *     after a slices merge (mergekit §3.5);
 *   - tokenizer and generation files copied from the tokenizer source
 *     (mergekit §6.6 list), with chat_template applied when configured;
 *   - mergekit_config.yml (the config text verbatim) and README.md, a model
 *     card with YAML front matter (mergekit §3.6), unless disabled.
 *   Every file is fsynced; the caller fsyncs the folder and renames it.
 */
#include "core/internal.h"
#include "formats/formats.h"
#include "sinks/output.h"
#include "plan/vocab.h"

#include <jansson.h>

static int write_json(const char *dir, const char *name, json_t *root, struct alloy_err *err)
{
    char *path = alloy_xasprintf("%s/%s", dir, name);
    char *text = json_dumps(root, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    int rc;
    if (!path || !text) rc = alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory writing %s", name);
    else {
        size_t n = strlen(text);
        char *withnl = alloy_xasprintf("%s\n", text);
        rc = withnl ? alloy_write_file(path, withnl, n + 1, err) : alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
        free(withnl);
    }
    free(path);
    free(text);
    return rc;
}

int alloy_output_write_index(const struct alloy_plan *p, const char *dir, struct alloy_err *err)
{
    json_t *root = json_object(), *meta = json_object(), *wm = json_object();
    json_object_set_new(meta, "total_size", json_integer((json_int_t)p->total_bytes));
    json_object_set_new(meta, "mergekit_version", json_string("0.1.4"));
    json_object_set_new(meta, "alloy_version", json_string(ALLOY_VERSION));
    json_object_set_new(root, "metadata", meta);
    for (size_t i = 0; i < p->ntensors; i++)
        json_object_set_new(wm, p->tensors[i].name, json_string(p->shards[p->tensors[i].shard].file));
    json_object_set_new(root, "weight_map", wm);
    int rc = write_json(dir, "model.safetensors.index.json", root, err);
    json_decref(root);
    return rc;
}

static const char *const g_layer_keys[] = {"num_hidden_layers", "n_layer", "num_layers", "n_layers"};

int alloy_output_config_text(const struct alloy_plan *p, char **out, struct alloy_err *err)
{
    const struct alloy_model *donor = p->models[p->donor];
    const char *ctext = alloy_model_config_text(donor);
    if (!ctext)
        return alloy_err_set(err, ALLOY_ERR_IO, "%s/config.json: missing; the output needs the config of %s",
                             alloy_model_dir(donor), alloy_model_ref(donor));
    json_error_t jerr;
    json_t *root = json_loads(ctext, JSON_REJECT_DUPLICATES, &jerr);
    if (!json_is_object(root)) {
        json_decref(root);
        return alloy_err_set(err, ALLOY_ERR_FORMAT, "%s/config.json: not a JSON object (%s, line %d)",
                             alloy_model_dir(donor), jerr.text, jerr.line);
    }
    const struct alloy_config *cfg = p->cfg;
    if (cfg->has_out_dtype || cfg->has_dtype) {
        const char *name = alloy_dtype_traits(cfg->has_out_dtype ? cfg->out_dtype : cfg->dtype)->torch;
        json_object_set_new(root, "torch_dtype", json_string(name));
        if (json_object_get(root, "dtype")) json_object_set_new(root, "dtype", json_string(name));
    }
    if (p->out_layers >= 0) {
        json_t *holder = root;
        json_t *tc = json_object_get(root, "text_config");
        int done = 0;
        for (int pass = 0; pass < 2 && !done; pass++, holder = tc) {
            if (!json_is_object(holder)) continue;
            for (size_t k = 0; k < ALLOY_ARRAY_LEN(g_layer_keys) && !done; k++)
                if (json_is_integer(json_object_get(holder, g_layer_keys[k]))) {
                    json_object_set_new(holder, g_layer_keys[k], json_integer(p->out_layers));
                    done = 1;
                }
        }
    }
    if (p->vocab) { /* mergekit §6.5: the (padded) length of the built tokenizer */
        json_t *tc = json_object_get(root, "text_config");
        json_t *holder = !json_object_get(root, "vocab_size") && json_is_object(tc) ? tc : root;
        json_object_set_new(holder, "vocab_size", json_integer((json_int_t)p->vocab->rows));
    }
    char *text = json_dumps(root, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    json_decref(root);
    *out = text ? alloy_xasprintf("%s\n", text) : NULL;
    free(text);
    return *out ? ALLOY_OK : alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory writing config.json");
}

static int write_config(const struct alloy_plan *p, const char *dir, struct alloy_err *err)
{
    char *text = NULL, *path = NULL;
    int rc = alloy_output_config_text(p, &text, err);
    if (!rc && !(path = alloy_xasprintf("%s/config.json", dir))) rc = alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
    if (!rc) rc = alloy_write_file(path, text, strlen(text), err);
    free(path);
    free(text);
    return rc;
}

/* ------------------------------------------------------------ tokenizer */

/* Reads a JSON file of at most 16 MiB (NULL on error, with err filled when given). */
static json_t *load_json(const char *path, struct alloy_err *err)
{
    char *text;
    size_t len;
    if (alloy_read_file(path, (size_t)16 << 20, &text, &len, err) != ALLOY_OK) return NULL;
    json_error_t jerr;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    free(text);
    if (!root) alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: not valid JSON: %s (line %d)", path, jerr.text, jerr.line);
    return root;
}

static const char *const g_tokenizer_files[] = {
    "tokenizer_config.json", "special_tokens_map.json", "tokenizer.json", "tokenizer.model", "added_tokens.json",
    "merges.txt", "vocab.json", "chat_template.jinja", "generation_config.json", "chat_template.json",
};

const char *alloy_output_tokenizer_file(size_t i)
{
    return i < ALLOY_ARRAY_LEN(g_tokenizer_files) ? g_tokenizer_files[i] : NULL;
}

int alloy_output_check_sources(const struct alloy_plan *p, struct alloy_err *err)
{
    int rc = ALLOY_OK;
    for (size_t i = 0; p->tokenizer_donor >= 0 && i < ALLOY_ARRAY_LEN(g_tokenizer_files) && !rc; i++) {
        char *path = NULL;
        rc = alloy_folder_file(alloy_model_dir(p->models[p->tokenizer_donor]), g_tokenizer_files[i], &path, err);
        free(path);
    }
    static const char *const built[] = {"tokenizer_config.json", "special_tokens_map.json"};
    for (size_t i = 0; p->vocab && i < ALLOY_ARRAY_LEN(built) && !rc; i++) {
        char *path = NULL;
        rc = alloy_folder_file(alloy_model_dir(p->models[p->vocab->source]), built[i], &path, err);
        free(path);
    }
    return rc;
}

/* The template text for chat_template: a built-in name or a literal. */
static int resolve_chat_template(const struct alloy_plan *p, char **out, struct alloy_err *err)
{
    const char *ct = p->cfg->chat_template;
    *out = NULL;
    if (!ct) return ALLOY_OK;
    const char *builtin = alloy_chat_template_builtin(ct);
    if (builtin) return (*out = alloy_xstrdup(builtin)) ? ALLOY_OK : alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
    if (strcmp(ct, "auto") == 0) {
        /* the most common template among the models (ties: first seen), each file read once */
        char **tpl = alloy_xcalloc(p->nmodels, sizeof *tpl);
        if (!tpl) return alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
        for (size_t i = 0; i < p->nmodels; i++) {
            char *path = NULL;
            alloy_folder_file(alloy_model_dir(p->models[i]), "tokenizer_config.json", &path, NULL);
            json_t *tc = path && alloy_is_file(path) ? load_json(path, NULL) : NULL;
            const char *s = json_string_value(json_object_get(tc, "chat_template"));
            if (s && *s) tpl[i] = alloy_xstrdup(s);
            json_decref(tc);
            free(path);
        }
        size_t best = 0;
        for (size_t i = 0; i < p->nmodels; i++) {
            size_t count = 0;
            for (size_t j = 0; tpl[i] && j < p->nmodels; j++) count += tpl[j] && strcmp(tpl[i], tpl[j]) == 0;
            if (count > best) best = count, *out = tpl[i];
        }
        for (size_t i = 0; i < p->nmodels; i++)
            if (tpl[i] != *out) free(tpl[i]);
        free(tpl);
        return ALLOY_OK;
    }
    return (*out = alloy_xstrdup(ct)) ? ALLOY_OK : ALLOY_ERR_NOMEM;
}

/* tokenizer_config.json for the built tokenizer: the source model's (else a minimal one) with
 * added_tokens_decoder listing the output's added tokens by id, and the chat template when configured. */
static int write_built_config(const struct alloy_plan *p, const char *template_text, const char *dir,
                              struct alloy_err *err)
{
    char *path = NULL;
    json_t *tc = NULL, *dec = json_object();
    int rc = alloy_folder_file(alloy_model_dir(p->models[p->vocab->source]), "tokenizer_config.json", &path, err);
    if (!rc && alloy_is_file(path)) {
        if (!(tc = load_json(path, err))) rc = err && err->status ? (int)err->status : ALLOY_ERR_FORMAT;
        else if (!json_is_object(tc)) rc = alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: expected a JSON object", path);
    } else if (!rc && !(tc = json_pack("{s:s}", "tokenizer_class", "PreTrainedTokenizerFast"))) {
        rc = alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
    }
    const json_t *added = json_object_get(p->vocab->tokenizer, "added_tokens");
    for (size_t i = 0; !rc && i < json_array_size(added); i++) {
        json_t *a = json_deep_copy(json_array_get(added, i));
        char key[32];
        snprintf(key, sizeof key, "%lld", (long long)json_integer_value(json_object_get(a, "id")));
        if (!a || json_object_del(a, "id") || json_object_set_new(dec, key, a))
            rc = alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
    }
    if (!rc && (!dec || json_object_set(tc, "added_tokens_decoder", dec) ||
                (template_text && json_object_set_new(tc, "chat_template", json_string(template_text)))))
        rc = alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
    if (!rc) rc = write_json(dir, "tokenizer_config.json", tc, err);
    json_decref(dec);
    json_decref(tc);
    free(path);
    return rc;
}

/* The built tokenizer of a tokenizer merge, as save_pretrained writes it: tokenizer.json with the merged
 * vocabulary, tokenizer_config.json, and the source model's special_tokens_map.json. The donor's
 * generation_config.json and tokenizer.model are not copied (mergekit §6.6). */
static int write_built_tokenizer(const struct alloy_plan *p, const char *template_text, const char *dir,
                                 struct alloy_err *err)
{
    char *from = NULL, *to = NULL;
    int rc = write_json(dir, "tokenizer.json", p->vocab->tokenizer, err);
    if (!rc) rc = write_built_config(p, template_text, dir, err);
    if (!rc) rc = alloy_folder_file(alloy_model_dir(p->models[p->vocab->source]), "special_tokens_map.json", &from, err);
    if (!rc && alloy_is_file(from)) {
        if (!(to = alloy_xasprintf("%s/special_tokens_map.json", dir))) rc = alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
        else rc = alloy_copy_file(from, to, err);
    }
    free(from);
    free(to);
    return rc;
}

/* A GGUF donor has no tokenizer files: its tokenizer.json is rebuilt from the metadata, or a warning says
 * why none is written. */
static int write_gguf_tokenizer(const struct alloy_model *donor, const struct alloy_merge_options *o, const char *dir,
                                struct alloy_err *err)
{
    char *text = NULL, *path = NULL;
    struct alloy_err why = {0};
    if (alloy_model_gguf_tokenizer(donor, &text, &why) != ALLOY_OK) {
        if (o->log) o->log(o->log_user, 0, why.msg);
        return ALLOY_OK;
    }
    int rc = ALLOY_OK;
    if (text && !(path = alloy_xasprintf("%s/tokenizer.json", dir))) rc = alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
    else if (text) rc = alloy_write_file(path, text, strlen(text), err);
    free(path);
    free(text);
    return rc;
}

static int copy_tokenizer(const struct alloy_plan *p, const struct alloy_merge_options *o, const char *dir,
                          struct alloy_err *err)
{
    char *template_text = NULL;
    int rc = resolve_chat_template(p, &template_text, err);
    if (rc) return rc;
    if (p->vocab) {
        rc = write_built_tokenizer(p, template_text, dir, err);
        free(template_text);
        return rc;
    }
    if (p->tokenizer_donor < 0) {
        if (template_text && o->log)
            o->log(o->log_user, 0, "chat_template is ignored with --no-copy-tokenizer (no tokenizer is written)");
        free(template_text);
        return ALLOY_OK;
    }
    rc = write_gguf_tokenizer(p->models[p->tokenizer_donor], o, dir, err);
    const char *src = alloy_model_dir(p->models[p->tokenizer_donor]);
    for (size_t i = 0; i < ALLOY_ARRAY_LEN(g_tokenizer_files) && !rc; i++) {
        char *from = NULL, *to = NULL;
        rc = alloy_folder_file(src, g_tokenizer_files[i], &from, err);
        if (!rc && !(to = alloy_xasprintf("%s/%s", dir, g_tokenizer_files[i])))
            rc = alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
        if (!rc && alloy_is_file(from)) {
            if (template_text && strcmp(g_tokenizer_files[i], "tokenizer_config.json") == 0) {
                json_t *tc = load_json(from, err);
                if (!json_is_object(tc)) {
                    if (tc) rc = alloy_err_set(err, ALLOY_ERR_FORMAT, "%s: expected a JSON object", from);
                    else rc = err && err->status ? (int)err->status : ALLOY_ERR_FORMAT;
                } else {
                    json_object_set_new(tc, "chat_template", json_string(template_text));
                    rc = write_json(dir, g_tokenizer_files[i], tc, err);
                }
                json_decref(tc);
            } else if (template_text && (strcmp(g_tokenizer_files[i], "chat_template.jinja") == 0 ||
                                         strcmp(g_tokenizer_files[i], "chat_template.json") == 0)) {
                /* replaced by the configured template in tokenizer_config.json */
            } else {
                rc = alloy_copy_file(from, to, err);
            }
        }
        free(from);
        free(to);
    }
    free(template_text);
    return rc;
}

/* ------------------------------------------------------------ model card */

/* mergekit's rule: a reference counts as a Hub repo when it is not an
 * absolute or home path, has at most one '/', and is not a local folder
 * (nor a model in memory: a multi-stage merge's intermediate, named). */
static int is_hub_ref(const struct alloy_model *m)
{
    const char *ref = alloy_model_ref(m);
    if (alloy_model_in_memory(m) || ref[0] == '/' || ref[0] == '~' || ref[0] == '.') return 0;
    const char *s = strchr(ref, '/');
    if (s && strchr(s + 1, '/')) return 0;
    return !alloy_is_dir(ref);
}

static int write_card(const struct alloy_plan *p, const char *dir, const char *out_dir, struct alloy_err *err)
{
    const struct alloy_config *cfg = p->cfg;
    /* sized from what goes in (each reference at most three times), so the card can never run out of room:
       many models with long names must not fail a merge after the work is done */
    size_t cap = 4096 + cfg->text_len + strlen(out_dir);
    for (size_t i = 0; i < p->nmodels; i++) cap += 3 * strlen(alloy_model_ref(p->models[i])) + 64;
    char *buf = alloy_xmalloc(cap);
    if (!buf) return alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
    size_t n = 0;
#define EMIT(...) (n += (size_t)snprintf(buf + n, n < cap ? cap - n : 0, __VA_ARGS__))
    EMIT("---\n");
    int any = 0;
    for (size_t i = 0; i < p->nmodels; i++)
        if (is_hub_ref(p->models[i])) {
            if (!any++) EMIT("base_model:\n");
            EMIT("- %s\n", alloy_model_ref(p->models[i]));
        }
    EMIT("library_name: transformers\ntags:\n- alloy\n- merge\n- mergekit\n---\n");
    const char *title = strrchr(out_dir, '/');
    EMIT("# %s\n\n", title ? title + 1 : out_dir);
    EMIT("This is a merge of pre-trained language models created with "
         "[alloy](https://github.com/alloy-merge/alloy), a native mergekit-compatible merge tool.\n\n");
    EMIT("## Merge Details\n### Merge Method\n\nThis model was merged using the %s merge method", p->method->name);
    if (p->base >= 0 && strcmp(p->method->name, "slerp") != 0) EMIT(" using %s as a base", alloy_model_ref(p->models[p->base]));
    EMIT(".\n\n### Models Merged\n\nThe following models were included in the merge:\n");
    for (size_t i = 0; i < p->nmodels; i++) {
        if ((int)i == p->base) continue;
        const char *r = alloy_model_ref(p->models[i]);
        if (is_hub_ref(p->models[i])) EMIT("* [%s](https://huggingface.co/%s)\n", r, r);
        else EMIT("* %s\n", r);
    }
    EMIT("\n### Configuration\n\nThe following YAML configuration was used to produce this model:\n\n```yaml\n");
#undef EMIT
    int rc = ALLOY_OK;
    if (n + cfg->text_len + 16 > cap) rc = alloy_err_set(err, ALLOY_ERR_NOMEM, "model card too large");
    else {
        memcpy(buf + n, cfg->text, cfg->text_len);
        n += cfg->text_len;
        if (cfg->text_len && cfg->text[cfg->text_len - 1] != '\n') buf[n++] = '\n';
        memcpy(buf + n, "```\n", 4);
        n += 4;
        char *path = alloy_xasprintf("%s/README.md", dir);
        rc = path ? alloy_write_file(path, buf, n, err) : alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
        free(path);
    }
    free(buf);
    return rc;
}

int alloy_output_write_files(const struct alloy_plan *p, const struct alloy_merge_options *o, const char *dir,
                             struct alloy_err *err)
{
    int rc = ALLOY_OK;
    if (p->nshards > 1) rc = alloy_output_write_index(p, dir, err);
    if (!rc) rc = write_config(p, dir, err);
    if (!rc) rc = copy_tokenizer(p, o, dir, err);
    if (!rc && o->write_model_card) {
        char *path = alloy_xasprintf("%s/mergekit_config.yml", dir);
        rc = path ? alloy_write_file(path, p->cfg->text, p->cfg->text_len, err)
                  : alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
        free(path);
        if (!rc) rc = write_card(p, dir, o->out_dir, err);
    }
    return rc;
}
