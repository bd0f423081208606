/*
 * publish.h — output folder checks and atomic publishing (publish.c).
 */
#ifndef ALLOY_PUBLISH_H
#define ALLOY_PUBLISH_H

#include "plan/plan.h"

/* Refuses an output path that is, contains or lies inside an input model folder or holds an input's file,
 * or that exists and is not a folder. */
int  alloy_check_out_dir(const struct alloy_plan *p, const char *out, struct alloy_err *err);
/* Moves the finished folder tmp into place as out, replacing an existing out only now, as a whole. */
int  alloy_publish_dir(const char *tmp, const char *out, struct alloy_err *err);
/* Removes a folder tree (symlinks are removed, never followed); -1 on failure. */
int  alloy_remove_tree(const char *path);
/* fsyncs a folder; -1 on failure. */
int  alloy_fsync_dir(const char *dir);

#endif
