/*
 * torch_writer.h — the tests' own torch.save: state dicts written as PyTorch writes them.
 *
 * DESIGN
 *   PyTorch is not available to the tests, so this writer reproduces the
 *   bytes of torch.save(state_dict, f) (torch/serialization.py `_save`,
 *   pickle protocol 2, torch's default) with the layout of
 *   caffe2/serialize/inline_container.cc (PyTorchStreamWriter on miniz):
 *     - the pickle is what Python's pickle.Pickler emits: the OrderedDict
 *       REDUCEd from (), MARK key value ... SETITEMS in batches of 1000,
 *       each tensor `_rebuild_tensor_v2(storage, offset, size, stride,
 *       False, OrderedDict())` with the storage as BINPERSID of
 *       ('storage', torch.<Type>Storage, key, 'cpu', numel); every string,
 *       tuple of 1+ items, global and REDUCE result memoized (BINPUT), the
 *       same object met again fetched with BINGET, as Pickler.memoize does;
 *       the state dict's `_metadata` attribute as a BUILD of
 *       {'_metadata': OrderedDict(prefix: {'version': 1})};
 *     - the zip holds <archive>/data.pkl, <archive>/byteorder ("little"),
 *       <archive>/data/<key> for each storage in sorted key order, then
 *       <archive>/version ("3\n"); every entry stored, its data aligned to
 *       64 bytes with an extra field "FB" + length + 'Z' padding (getPadding
 *       in inline_container.cc); central directory and end record as
 *       miniz writes them, zip64 records only when asked.
 *   Times, dates and version fields (which no reader checks) are zero.
 *   The tests also use the pieces (pickle and zip builders) to make hostile
 *   files.
 */
#ifndef ALLOY_TEST_TORCH_WRITER_H
#define ALLOY_TEST_TORCH_WRITER_H

#include <stddef.h>
#include <stdint.h>

struct tw_buf {
    uint8_t *p;
    size_t n, cap;
};
void tw_put(struct tw_buf *b, const void *d, size_t n);
void tw_le(struct tw_buf *b, uint64_t v, int n);

/* One tensor of a state dict: a view of storage `key` (numel elements of storage type `type`, bytes at
 * data, which may be NULL for "same as an earlier tensor with this key"). */
struct tw_tensor {
    const char *name, *type, *key; /* type: "FloatStorage", "BFloat16Storage", ... */
    uint64_t numel, offset;
    int ndim;
    int64_t shape[4], stride[4];
    const void *data;
    size_t nbytes;
};

/* The pickle of an OrderedDict state dict (with a _metadata BUILD when meta != 0). */
void tw_pickle(struct tw_buf *b, const struct tw_tensor *t, int n, int meta);

/* A zip under construction; entries are full names ("archive/data.pkl"). */
struct tw_zip {
    struct tw_buf b;
    int n;
    struct { char name[96]; uint32_t crc; uint64_t size, off; } e[256];
};
void tw_zip_add(struct tw_zip *z, const char *name, const void *data, size_t len);
/* Central directory and end record; zip64 != 0 writes zip64 records (and 0xffffffff in the 32-bit fields). */
void tw_zip_finish(struct tw_zip *z, int zip64);

/* The whole torch.save file for t[0..n) into b (archive folder `archive`). */
void tw_torch_save(struct tw_buf *b, const char *archive, const struct tw_tensor *t, int n, int zip64);
/* pytorch_model.bin (shards == 1) or pytorch_model-0000K-of-0000N.bin plus pytorch_model.bin.index.json
 * in dir, holding every tensor of the safetensors file src. 0 on success. */
int tw_convert(const char *src, const char *dir, int shards);

#endif
