// Checkpoint files (core/io.cc): safetensors read by memory-mapping, written atomically; torch.save zip pickles.
#pragma once
#include "core/dtype.h"

#include <string>
#include <utility>
#include <vector>

namespace x2i {

using Tensors = std::vector<std::pair<std::string, at::Tensor>>;

// One tensor of a safetensors file: its byte range [begin, end) after the header (dataStart).
struct SafetensorsEntry {
  std::string name;
  at::ScalarType dtype;
  std::vector<int64_t> shape;
  uint64_t begin, end;
};

// The entries, each range re-checked against the file; CPU tensors are zero-copy views of a private mapping
// (copy-on-write). On a GPU, the raw bytes go over the bus and are cast there; `cast`: floating tensors become `want`.
Tensors readSafetensors(const std::string& path, uint64_t dataStart, const std::vector<SafetensorsEntry>& entries,
                        c10::Device device, bool cast, at::ScalarType want);

// header (JSON, padded) then each tensor's bytes (sizes[i] checked): a temporary file in the same folder,
// fsync, rename over path, fsync the folder. A crash leaves the old file intact.
void writeSafetensors(const std::string& path, const std::string& header, const std::vector<at::Tensor>& tensors,
                      const std::vector<int64_t>& sizes);

// A torch.save zip archive of a (possibly nested) dict of tensors; nested dicts are flattened with '.',
// values that are not tensors are skipped.
Tensors loadTorchCheckpoint(const std::string& path);

}  // namespace x2i
