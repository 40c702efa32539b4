# node-gyp route to the same addon that CMakeLists.txt builds (used by `npm run build:prebuild`, through
# prebuildify). The everyday build is cmake-js (`npm install`); package.json sets "gypfile": false so that
# npm never runs node-gyp on its own. Both read LibTorch from scripts/libtorch.mjs, and both take from
# scripts/sources.mjs: the sources (every native/**/*.cc, CMake's GLOB_RECURSE rule, plus the generated unit
# that embeds the source fingerprint) and the link flags (-Wl,--no-undefined, napi_* / node_api_* excepted).
# This route compiles the C++ only: the CUDA kernels (native/**/*.cu) come with the CMake build, and their
# LibTorch composites run otherwise.
{
  "targets": [{
    "target_name": "x2i",
    "sources": ["<!@(node scripts/sources.mjs --gyp-sources)"],
    "include_dirs": [
      "native",
      "<!(node -p \"require('node-addon-api').include_dir\")",
      "<!@(node scripts/libtorch.mjs --include)"
    ],
    "defines": [
      "NAPI_VERSION=8", "NODE_ADDON_API_CPP_EXCEPTIONS", "NODE_ADDON_API_DISABLE_DEPRECATED",
      "<!@(node scripts/libtorch.mjs --gyp-defines)"
    ],
    "cflags_cc!": ["-fno-exceptions", "-fno-rtti", "-std=gnu++17", "-std=gnu++20"],
    "cflags_cc": ["-std=c++17", "-fexceptions", "-frtti", "-O2", "-fvisibility=hidden", "-Wno-unused-parameter"],
    "ldflags": ["<!@(node scripts/sources.mjs --ldflags <(node_root_dir)/include/node --rsp build/gyp-generated/x2i-napi-undefined.rsp)"],
    "libraries": ["<!@(node scripts/libtorch.mjs --gyp-libs)"]
  }]
}
