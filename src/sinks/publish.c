/*
 * publish.c — the folder side of the folder sink: where an output folder may
 * go, and how it appears complete or not at all.
 *
 * DESIGN
 *   The output is built in a hidden sibling "<out>.alloy-tmp-XXXXXX" (mode
 *   0700 while incomplete). Publishing renames an existing folder aside,
 *   renames the new one into place, and only then removes the old one, so
 *   an interruption leaves either the old folder or the new one. Before
 *   anything is written, an output path that is, contains or lies inside an
 *   input model folder, or that holds one of an input's files (an HF cache
 *   snapshot links its files into blobs/), is refused: publishing replaces
 *   the output path as a whole. Removal never follows a symlink.
 */
#include "core/internal.h"
#include "sinks/publish.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sys/stat.h>
#include <unistd.h>

int alloy_remove_tree(const char *path)
{
    struct stat st; /* a symlink is removed, never followed: its target is not ours */
    if (lstat(path, &st) != 0) return -1;
    if (!S_ISDIR(st.st_mode)) return unlink(path);
    DIR *d = opendir(path);
    if (!d) return -1;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        char *sub = alloy_xasprintf("%s/%s", path, e->d_name);
        if (!sub) continue;
        alloy_remove_tree(sub);
        free(sub);
    }
    closedir(d);
    return rmdir(path);
}

int alloy_fsync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return -1;
    int rc = fsync(fd);
    close(fd);
    return rc;
}

static char *parent_dir(const char *path)
{
    char *copy = alloy_xstrdup(path);
    if (!copy) return NULL;
    size_t n = strlen(copy);
    while (n > 1 && copy[n - 1] == '/') copy[--n] = '\0';
    char *slash = strrchr(copy, '/');
    if (!slash) { free(copy); return alloy_xstrdup("."); }
    if (slash == copy) slash[1] = '\0';
    else *slash = '\0';
    return copy;
}

/* 1 when path a is b or lies inside b (both canonical). */
static int path_within(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    if (lb == 1 && b[0] == '/') return 1;
    return la >= lb && strncmp(a, b, lb) == 0 && (a[lb] == '\0' || a[lb] == '/');
}

/* Refuses an output folder that is (or contains, or lies inside) an input
 * folder, or that holds an input file (an HF-cache snapshot links its files
 * into blobs/): publishing replaces the output path as a whole. */
int alloy_check_out_dir(const struct alloy_plan *p, const char *out, struct alloy_err *err)
{
    char real_out[PATH_MAX], real_parent[PATH_MAX];
    char *parent = parent_dir(out);
    if (!parent) return alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
    if (!alloy_is_dir(parent) || !realpath(parent, real_parent)) {
        int rc = alloy_err_set(err, ALLOY_ERR_IO, "%s: the parent folder %s does not exist", out, parent);
        free(parent);
        return rc;
    }
    free(parent);
    if (!realpath(out, real_out)) { /* not there yet: where it will be */
        const char *base = strrchr(out, '/');
        base = base ? base + 1 : out;
        if ((size_t)snprintf(real_out, sizeof real_out, "%s/%s", strcmp(real_parent, "/") ? real_parent : "", base) >=
            sizeof real_out)
            return alloy_err_set(err, ALLOY_ERR_IO, "%s: path too long", out);
    }
    for (size_t i = 0; i < p->nmodels; i++) {
        const struct alloy_model *m = p->models[i];
        char real_in[PATH_MAX];
        if (!realpath(alloy_model_dir(m), real_in)) continue;
        int same = strcmp(real_out, real_in) == 0;
        if (same || path_within(real_in, real_out) || path_within(real_out, real_in))
            return alloy_err_set(err, ALLOY_ERR_CONFIG, "%s: output folder %s input model %s; choose another output "
                                 "folder (alloy never overwrites its inputs)", out,
                                 same ? "is the" : path_within(real_in, real_out) ? "contains the" : "lies inside the",
                                 alloy_model_ref(m));
        const struct alloy_tensor_file *last = NULL;
        for (size_t k = 0; k < alloy_model_count(m); k++) {
            const struct alloy_tensor_file *f = alloy_model_tensor(m, k)->file;
            char real_file[PATH_MAX];
            if (f == last || !realpath(alloy_tensor_file_path(f), real_file)) continue;
            last = f;
            if (path_within(real_file, real_out))
                return alloy_err_set(err, ALLOY_ERR_CONFIG, "%s: output folder holds %s, a file of input model %s; "
                                     "choose another output folder (alloy never overwrites its inputs)", out,
                                     real_file, alloy_model_ref(m));
        }
    }
    struct stat st;
    if (stat(out, &st) == 0 && !S_ISDIR(st.st_mode)) /* publishing would delete it */
        return alloy_err_set(err, ALLOY_ERR_IO, "%s: exists and is not a folder; alloy only replaces a folder "
                             "(move it away or choose another output path)", out);
    return ALLOY_OK;
}

/* Moves tmp into place as out. An existing out is replaced only now, as a whole. */
int alloy_publish_dir(const char *tmp, const char *out, struct alloy_err *err)
{
    char *old = NULL;
    if (alloy_is_dir(out) || access(out, F_OK) == 0) {
        old = alloy_xasprintf("%s.alloy-old-%ld", out, (long)getpid());
        if (!old) return alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
        if (rename(out, old) != 0) {
            int rc = alloy_err_set(err, ALLOY_ERR_IO, "%s: cannot move the existing folder aside: %s", out, strerror(errno));
            free(old);
            return rc;
        }
    }
    if (rename(tmp, out) != 0) {
        int rc = alloy_err_set(err, ALLOY_ERR_IO, "%s: cannot rename %s into place: %s", out, tmp, strerror(errno));
        if (old) rename(old, out);
        free(old);
        return rc;
    }
    if (old) {
        alloy_remove_tree(old);
        free(old);
    }
    char *parent = parent_dir(out);
    if (parent) alloy_fsync_dir(parent);
    free(parent);
    return ALLOY_OK;
}
