/*
 * output.h — the non-tensor files of an output folder (output.c).
 */
#ifndef ALLOY_OUTPUT_H
#define ALLOY_OUTPUT_H

#include "plan/plan.h"

/* Writes index, config.json, tokenizer files, mergekit_config.yml and
 * README.md into dir (the temporary output folder). */
int alloy_output_write_files(const struct alloy_plan *p, const struct alloy_merge_options *o, const char *dir,
                             struct alloy_err *err);

/* model.safetensors.index.json for p's shards (names, shard files, total size) into dir. */
int alloy_output_write_index(const struct alloy_plan *p, const char *dir, struct alloy_err *err);

/* The output's config.json text (the donor's, with dtype and layer count updated), malloc'd. */
int alloy_output_config_text(const struct alloy_plan *p, char **out, struct alloy_err *err);

/* The i-th tokenizer or generation file copied from the tokenizer source; NULL past the end. */
const char *alloy_output_tokenizer_file(size_t i);

/* Applies the model-folder trust rule to the files copied from the tokenizer source, before anything is
 * written (copy_tokenizer applies it again when it copies). */
int alloy_output_check_sources(const struct alloy_plan *p, struct alloy_err *err);

/* The text of mergekit's bundled chat template `name` (alpaca, chatml, exaone, llama3, mistral), or NULL. */
const char *alloy_chat_template_builtin(const char *name);

#endif
