/*
 * publish.c — the folder side of the folder sink: where an output folder may
 * go, and how it appears complete or not at all.
 *
 * DESIGN
 *   The output is built in a hidden sibling "<out>.alloy-tmp-<pid>-XXXXXX"
 *   (mode 0700 while incomplete; the pid names its owner, so a later run
 *   removes the folders of runs that were killed). Publishing is one atomic
 *   step under an flock on the parent folder: renameat2(RENAME_EXCHANGE)
 *   swaps the new folder with an existing one, which is then removed; where
 *   the file system cannot exchange, the old folder is renamed aside, the
 *   new one into place, and the old one removed (the lock keeps concurrent
 *   runs from interleaving those renames). Before anything is written, an
 *   output path is refused when it is, contains or lies inside an input
 *   folder (for an HF snapshot, its repository folder with refs/ and
 *   blobs/), when it holds any file an input reads, and when it exists and
 *   holds anything a model output does not (unless --overwrite): publishing
 *   replaces the output path as a whole. An output path that is a symlink
 *   to a folder stands for that folder (checked, then replaced next to it;
 *   the link stays). Removal never follows a symlink.
 */
#include "core/internal.h"
#include "formats/formats.h"
#include "formats/gguf.h"
#include "lora/adapter.h"
#include "sinks/output.h"
#include "sinks/publish.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef RENAME_EXCHANGE
#define RENAME_EXCHANGE (1 << 1)
#endif

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

/* ------------------------------------------------------------ where the output may go */

static int refuse_input(const char *out, const char *what, const char *kind, const char *ref, struct alloy_err *err)
{
    return alloy_err_set(err, ALLOY_ERR_CONFIG, "%s: output folder %s input %s %s; choose another output folder "
                         "(alloy never overwrites its inputs)", out, what, kind, ref);
}

static int refuse_file(const char *out, const char *real_file, const char *ref, struct alloy_err *err)
{
    return alloy_err_set(err, ALLOY_ERR_CONFIG, "%s: output folder holds %s, a file of input model %s; choose another "
                         "output folder (alloy never overwrites its inputs)", out, real_file, ref);
}

/* Refuses real_out when it holds a file model m reads: a shard, its index, config.json or a tokenizer file. */
static int check_input_files(const struct alloy_model *m, const char *out, const char *real_out, struct alloy_err *err)
{
    char real_file[PATH_MAX];
    const struct alloy_tensor_file *last = NULL;
    for (size_t k = 0; k < alloy_model_count(m); k++) {
        const struct alloy_tensor_file *f = alloy_model_tensor(m, k)->file;
        if (f == last) continue;
        last = f;
        for (size_t i = 0; alloy_tensor_file_part(f, i); i++) /* every shard of a split GGUF */
            if (realpath(alloy_tensor_file_part(f, i), real_file) && alloy_path_within(real_file, real_out))
                return refuse_file(out, real_file, alloy_model_ref(m), err);
    }
    static const char *const fixed[] = {"config.json", "model.safetensors.index.json", "model.safetensors"};
    for (size_t i = 0;; i++) {
        const char *name = i < ALLOY_ARRAY_LEN(fixed) ? fixed[i] : alloy_output_tokenizer_file(i - ALLOY_ARRAY_LEN(fixed));
        if (!name) break;
        char *path = alloy_xasprintf("%s/%s", alloy_model_dir(m), name);
        if (!path) return alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
        int hit = realpath(path, real_file) && alloy_path_within(real_file, real_out);
        free(path);
        if (hit) return refuse_file(out, real_file, alloy_model_ref(m), err);
    }
    return ALLOY_OK;
}

/* Refuses real_out when it is, contains or lies inside the input folder dir (of input ref). */
static int check_folder(const char *dir, const char *kind, const char *ref, const char *out, const char *real_out,
                        struct alloy_err *err)
{
    char real_in[PATH_MAX];
    if (!realpath(dir, real_in)) return ALLOY_OK;
    if (strcmp(real_out, real_in) == 0) return refuse_input(out, "is the", kind, ref, err);
    if (alloy_path_within(real_in, real_out)) return refuse_input(out, "contains the", kind, ref, err);
    if (alloy_path_within(real_out, real_in)) return refuse_input(out, "lies inside the", kind, ref, err);
    return ALLOY_OK;
}

/* Refuses real_out when it is, contains or lies inside model m's folder, its HF repository folder, or the
 * folder of the adapter a `model+adapter` reference applies. */
static int check_input(const struct alloy_model *m, const char *out, const char *real_out, struct alloy_err *err)
{
    char real_in[PATH_MAX], root[PATH_MAX];
    const struct alloy_adapter *a = alloy_model_adapter(m);
    int rc = a ? check_folder(a->dir, "adapter", a->dir, out, real_out, err) : ALLOY_OK;
    if (a && !rc && alloy_folder_root(a->dir, root) == 0 && realpath(a->dir, real_in) && strcmp(root, real_in) != 0)
        rc = check_folder(root, "adapter", a->dir, out, real_out, err); /* an adapter in the HF cache: its repository */
    if (rc || !realpath(alloy_model_dir(m), real_in)) return rc;
    if ((rc = check_folder(alloy_model_dir(m), "model", alloy_model_ref(m), out, real_out, err))) return rc;
    rc = check_input_files(m, out, real_out, err);
    if (rc || alloy_folder_root(alloy_model_dir(m), root) != 0 || strcmp(root, real_in) == 0) return rc;
    if (alloy_path_within(real_out, root) || alloy_path_within(root, real_out)) /* refs/, blobs/ of a cache repo */
        return alloy_err_set(err, ALLOY_ERR_CONFIG, "%s: output folder %s the Hugging Face cache folder %s of input "
                             "model %s; choose another output folder (alloy never overwrites its inputs)", out,
                             alloy_path_within(real_out, root) ? "lies inside" : "contains", root, alloy_model_ref(m));
    return ALLOY_OK;
}

/* 1 for a name a model or adapter output folder holds (what output.c, the shards, moe.c and adapter_write.c
 * write, a GGUF file). */
static int output_name(const char *name)
{
    static const char *const names[] = {"config.json", "model.safetensors.index.json", "README.md", "mergekit_config.yml",
                                        "mergekit_moe_config.yml", "adapter_config.json"};
    for (size_t i = 0; i < ALLOY_ARRAY_LEN(names); i++)
        if (strcmp(name, names[i]) == 0) return 1;
    for (size_t i = 0; alloy_output_tokenizer_file(i); i++)
        if (strcmp(name, alloy_output_tokenizer_file(i)) == 0) return 1;
    size_t n = strlen(name);
    return (n > 12 && strcmp(name + n - 12, ".safetensors") == 0) || (n > 5 && strcmp(name + n - 5, ".gguf") == 0);
}

/* Refuses an existing output folder holding anything a model output does not; the error lists the first few. */
static int check_contents(const char *out, struct alloy_err *err)
{
    struct stat st;
    if (lstat(out, &st) != 0 || !S_ISDIR(st.st_mode)) return ALLOY_OK;
    DIR *d = opendir(out);
    if (!d) return alloy_err_set(err, ALLOY_ERR_IO, "%s: cannot list the existing folder: %s", out, strerror(errno));
    char list[512] = "";
    size_t pos = 0, more = 0, found = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        char *sub = alloy_xasprintf("%s/%s", out, e->d_name);
        struct stat est;
        int dir = sub && lstat(sub, &est) == 0 && S_ISDIR(est.st_mode);
        free(sub);
        if (!dir && output_name(e->d_name)) continue;
        if (found++ < 5 && pos < sizeof list - 1)
            pos += (size_t)snprintf(list + pos, sizeof list - pos, "%s%s%s", pos ? ", " : "", e->d_name, dir ? "/" : "");
        else more++;
        if (pos >= sizeof list) pos = sizeof list - 1;
    }
    closedir(d);
    if (!found) return ALLOY_OK;
    return alloy_err_set(err, ALLOY_ERR_CONFIG, "%s: the folder exists and holds what a merge does not write (%s%s); "
                         "alloy replaces the output folder as a whole: move them away, choose another folder, or pass "
                         "--overwrite to replace it anyway", out, list, more ? ", …" : "");
}

/* An output path that is a symlink to a folder stands for that folder, as in mergekit (which writes into
 * it): the folder is checked and replaced, the link is kept. Any other path stands for itself. */
int alloy_out_target(const char *out, char **target, struct alloy_err *err)
{
    struct stat st, tst;
    char real[PATH_MAX];
    if (lstat(out, &st) != 0 || !S_ISLNK(st.st_mode) || (stat(out, &tst) == 0 && !S_ISDIR(tst.st_mode)))
        *target = alloy_xstrdup(out); /* absent, a folder, or a link to a non-folder (refused by the check) */
    else if (!realpath(out, real))
        return alloy_err_set(err, ALLOY_ERR_IO, "%s: is a symlink to a path that does not exist (%s); create the "
                             "folder it names or choose another output path", out, strerror(errno));
    else
        *target = alloy_xstrdup(real);
    return *target ? ALLOY_OK : alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
}

/* Refuses an output folder that is (or contains, or lies inside) an input folder, that holds a file an
 * input reads, or that exists and holds other files (unless overwrite): publishing replaces it whole. */
int alloy_check_out_dir(const struct alloy_plan *p, const char *out, int overwrite, struct alloy_err *err)
{
    return alloy_check_out_dir_models((const struct alloy_model *const *)p->models, p->nmodels, out, overwrite, err);
}

/* Refuses out (a folder or a file) when it is, contains or lies inside an input, or holds a file one reads. */
static int check_out_inputs(const struct alloy_model *const *models, size_t nmodels, const char *out,
                            struct alloy_err *err)
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
    for (size_t i = 0; i < nmodels; i++) {
        int rc = check_input(models[i], out, real_out, err);
        if (rc) return rc;
    }
    return ALLOY_OK;
}

int alloy_check_out_dir_models(const struct alloy_model *const *models, size_t nmodels, const char *out,
                               int overwrite, struct alloy_err *err)
{
    int rc = check_out_inputs(models, nmodels, out, err);
    if (rc) return rc;
    struct stat st;
    if (stat(out, &st) == 0 && !S_ISDIR(st.st_mode)) /* publishing would delete it */
        return alloy_err_set(err, ALLOY_ERR_IO, "%s: exists and is not a folder; alloy only replaces a folder "
                             "(move it away or choose another output path)", out);
    return overwrite ? ALLOY_OK : check_contents(out, err);
}

/* 1 when path is a regular file that starts with GGUF's magic. */
static int is_gguf(const char *path)
{
    char magic[4];
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC), ok = 0;
    if (fd < 0) return 0;
    struct stat st;
    ok = fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && pread(fd, magic, 4, 0) == 4 && memcmp(magic, "GGUF", 4) == 0;
    close(fd);
    return ok;
}

int alloy_check_out_file_models(const struct alloy_model *const *models, size_t nmodels, const char *out,
                                int overwrite, struct alloy_err *err)
{
    int rc = check_out_inputs(models, nmodels, out, err);
    if (rc) return rc;
    struct stat st;
    if (stat(out, &st) != 0) return ALLOY_OK;
    if (S_ISDIR(st.st_mode)) return alloy_err_set(err, ALLOY_ERR_CONFIG, "%s: a GGUF file to write, found a folder", out);
    if (overwrite || is_gguf(out)) return ALLOY_OK;
    return alloy_err_set(err, ALLOY_ERR_CONFIG, "%s: the file exists and is not a GGUF file; alloy replaces the "
                         "output file as a whole: move it away, choose another path, or pass --overwrite to replace "
                         "it anyway", out);
}

/* ------------------------------------------------------------ temporary folders */

/* Removes "<out>.alloy-tmp-<pid>-*" folders whose owner process is gone, and "<out>.alloy-old-<pid>" ones
 * (a previous result a killed run had moved aside) when out exists again. */
void alloy_remove_stale(const char *out)
{
    char *parent = parent_dir(out);
    const char *base = strrchr(out, '/');
    base = base ? base + 1 : out;
    DIR *d = parent ? opendir(parent) : NULL;
    size_t blen = strlen(base);
    struct dirent *e;
    while (d && (e = readdir(d))) {
        const char *n = e->d_name, *rest = n + blen;
        int tmp = strncmp(n, base, blen) == 0 && strncmp(rest, ".alloy-tmp-", 11) == 0;
        int old = strncmp(n, base, blen) == 0 && strncmp(rest, ".alloy-old-", 11) == 0 && access(out, F_OK) == 0;
        if (!tmp && !old) continue;
        char *end;
        long pid = strtol(rest + 11, &end, 10);
        if (pid <= 0 || end == rest + 11 || *end != (tmp ? '-' : '\0')) continue;
        if (kill((pid_t)pid, 0) == 0 || errno != ESRCH) continue;
        char *path = alloy_xasprintf("%s/%s", parent, n);
        if (path) alloy_remove_tree(path);
        free(path);
    }
    if (d) closedir(d);
    free(parent);
}

int alloy_make_tmp_dir(const char *out, char **tmp, struct alloy_err *err)
{
    alloy_remove_stale(out);
    if (!(*tmp = alloy_xasprintf("%s.alloy-tmp-%ld-XXXXXX", out, (long)getpid())))
        return alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
    if (mkdtemp(*tmp)) return ALLOY_OK;
    int rc = alloy_err_set(err, ALLOY_ERR_IO, "%s: cannot create a temporary folder next to it: %s", out, strerror(errno));
    free(*tmp);
    *tmp = NULL;
    return rc;
}

/* ------------------------------------------------------------ publishing */

int alloy_seal_tmp_dir(const char *tmp, struct alloy_err *err)
{
    if (alloy_fsync_dir(tmp) != 0) return alloy_err_set(err, ALLOY_ERR_IO, "%s: fsync failed: %s", tmp, strerror(errno));
    mode_t um = umask(0); /* private (mkdtemp: 0700) while incomplete; published with the usual umask permissions */
    umask(um);
    if (chmod(tmp, 0777 & ~um) != 0) return alloy_err_set(err, ALLOY_ERR_IO, "%s: chmod failed: %s", tmp, strerror(errno));
    return ALLOY_OK;
}

static int exchange(const char *a, const char *b)
{
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 28))
    return renameat2(AT_FDCWD, a, AT_FDCWD, b, RENAME_EXCHANGE);
#else
    return (int)syscall(SYS_renameat2, AT_FDCWD, a, AT_FDCWD, b, RENAME_EXCHANGE);
#endif
}

/* The renames, under the lock. The replaced folder is then at tmp (exchanged), or at *old (renamed aside). */
static int publish_locked(const char *tmp, const char *out, char **old, struct alloy_err *err)
{
    struct stat st;
    if (lstat(out, &st) != 0) {
        if (rename(tmp, out) == 0) return ALLOY_OK;
        return alloy_err_set(err, ALLOY_ERR_IO, "%s: cannot rename %s into place: %s", out, tmp, strerror(errno));
    }
    if (exchange(tmp, out) == 0) return ALLOY_OK; /* tmp now holds the old folder */
    if (errno != EINVAL && errno != ENOSYS && errno != EOPNOTSUPP)
        return alloy_err_set(err, ALLOY_ERR_IO, "%s: cannot move the existing folder aside: %s", out, strerror(errno));
    /* no exchange on this file system: aside, into place, back on failure */
    if (!(*old = alloy_xasprintf("%s.alloy-old-%ld", out, (long)getpid())))
        return alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
    int rc = ALLOY_OK;
    if (rename(out, *old) != 0) {
        rc = alloy_err_set(err, ALLOY_ERR_IO, "%s: cannot move the existing folder aside: %s", out, strerror(errno));
    } else if (rename(tmp, out) != 0) {
        rc = alloy_err_set(err, ALLOY_ERR_IO, "%s: cannot rename %s into place: %s", out, tmp, strerror(errno));
        rename(*old, out);
    }
    if (rc) {
        free(*old);
        *old = NULL;
    }
    return rc;
}

/* Moves tmp into place as out. An existing out is replaced only now, as a whole. */
int alloy_publish_dir(const char *tmp, const char *out, struct alloy_err *err)
{
    char *parent = parent_dir(out), *old = NULL;
    if (!parent) return alloy_err_set(err, ALLOY_ERR_NOMEM, "out of memory");
    int lock = open(parent, O_RDONLY | O_DIRECTORY | O_CLOEXEC); /* a failing lock only loses the serialisation */
    while (lock >= 0 && flock(lock, LOCK_EX) != 0 && errno == EINTR) {
    }
    int rc = publish_locked(tmp, out, &old, err);
    if (!rc) alloy_fsync_dir(parent);
    if (lock >= 0) close(lock);
    if (!rc) alloy_remove_tree(old ? old : tmp); /* after a plain rename nothing is at tmp */
    free(old);
    free(parent);
    return rc;
}
