/*
 * publish.h — output folder checks and atomic publishing (publish.c).
 */
#ifndef ALLOY_PUBLISH_H
#define ALLOY_PUBLISH_H

#include "plan/plan.h"

/* *target (malloc'd): the folder an output path stands for: its target when out is a symlink to a folder
 * (the folder is replaced, the link kept), else out itself. A dangling link is refused. */
int  alloy_out_target(const char *out, char **target, struct alloy_err *err);
/* Refuses an output path that is, contains or lies inside an input model folder (or its HF repository
 * folder), holds a file an input reads, exists and is not a folder, or (unless overwrite) is a folder
 * holding anything a model output does not. */
int  alloy_check_out_dir(const struct alloy_plan *p, const char *out, int overwrite, struct alloy_err *err);
/* The same rule against a list of input models (an adapter output: the models it was extracted from). */
int  alloy_check_out_dir_models(const struct alloy_model *const *models, size_t nmodels, const char *out,
                                int overwrite, struct alloy_err *err);
/* The same rule for an output file (GGUF): refused when it is an input file, lies inside an input folder (or
 * its HF repository folder), is a folder, or (unless overwrite) exists and is not a GGUF file. */
int  alloy_check_out_file_models(const struct alloy_model *const *models, size_t nmodels, const char *out,
                                 int overwrite, struct alloy_err *err);
/* Removes the temporary folders or files "<out>.alloy-tmp-<pid>-*" (and set-aside "<out>.alloy-old-<pid>") of
 * runs into out whose process is gone. */
void alloy_remove_stale(const char *out);
/* Removes the temporary folders of runs into out that are gone, then creates *tmp,
 * "<out>.alloy-tmp-<pid>-XXXXXX" (mode 0700). */
int  alloy_make_tmp_dir(const char *out, char **tmp, struct alloy_err *err);
/* Makes the finished temporary folder durable (fsync) and gives it the usual umask permissions. */
int  alloy_seal_tmp_dir(const char *tmp, struct alloy_err *err);
/* Moves the finished folder tmp into place as out, replacing an existing out only now, as a whole. */
int  alloy_publish_dir(const char *tmp, const char *out, struct alloy_err *err);
/* Removes a folder tree (symlinks are removed, never followed); -1 on failure. */
int  alloy_remove_tree(const char *path);
/* fsyncs a folder; -1 on failure. */
int  alloy_fsync_dir(const char *dir);

#endif
