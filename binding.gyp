# node-gyp route to the same addon that CMakeLists.txt builds (used by `npm run prebuild`, through
# prebuildify). The everyday build is cmake-js (`npm install`); package.json sets "gypfile": false so that
# npm never runs node-gyp on its own. Both read LibTorch from scripts/libtorch.mjs. This route compiles the C++
# only: the CUDA kernels (native/*.cu) come with the CMake build, and their LibTorch composites run otherwise.
{
  "targets": [{
    "target_name": "x2i",
    "sources": ["native/addon.cc", "native/alignnet.cc", "native/common.cc", "native/distill.cc", "native/flux.cc", "native/flux_wrap.cc",
                "native/io.cc", "native/qwen.cc", "native/t5.cc", "native/clip.cc", "native/tensor.cc", "native/vae.cc"],
    "include_dirs": [
      "<!(node -p \"require('node-addon-api').include_dir\")",
      "<!@(node scripts/libtorch.mjs --include)"
    ],
    "defines": [
      "NAPI_VERSION=8", "NODE_ADDON_API_CPP_EXCEPTIONS", "NODE_ADDON_API_DISABLE_DEPRECATED",
      "<!@(node scripts/libtorch.mjs --gyp-defines)"
    ],
    "cflags_cc!": ["-fno-exceptions", "-fno-rtti", "-std=gnu++17", "-std=gnu++20"],
    "cflags_cc": ["-std=c++17", "-fexceptions", "-frtti", "-O2", "-fvisibility=hidden", "-Wno-unused-parameter"],
    "libraries": ["<!@(node scripts/libtorch.mjs --gyp-libs)"]
  }]
}
