// Checkpoint files (core/io.cc): byte ranges read into owned memory (or mapped on request); safetensors written atomically.
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
  // A view into the storage [begin, end) (torch.save): shape with these strides from this element offset.
  bool strided = false;
  std::vector<int64_t> stride;
  int64_t offset = 0;
};

// The entries, each range (and view) re-checked against the file; each storage range read once into owned memory,
// or with `mmapRead`, CPU tensors are zero-copy views of a private mapping (copy-on-write; a file truncated under
// them raises SIGBUS at the next access). On a GPU, the raw bytes go over the bus and are cast there; `cast`:
// floating tensors become `want`.
Tensors readSafetensors(const std::string& path, uint64_t dataStart, const std::vector<SafetensorsEntry>& entries,
                        c10::Device device, bool cast, at::ScalarType want, bool mmapRead = false);

// header (JSON, padded) then each tensor's bytes (sizes[i] checked): a temporary file in the same folder,
// fsync, rename over path, fsync the folder. A crash leaves the old file intact.
void writeSafetensors(const std::string& path, const std::string& header, const std::vector<at::Tensor>& tensors,
                      const std::vector<int64_t>& sizes);

}  // namespace x2i
