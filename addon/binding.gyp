{
  "targets": [
    {
      "target_name": "tcptracer",
      "sources": [
        "src/addon.cpp",
        "src/bpf_error.cpp",
        "src/caps.cpp",
        "src/sd_notify.cpp",
        "src/objects/event_format.cpp",
        "src/objects/tracer.cpp"
      ],
      "include_dirs": [
        "<!(node -p \"require('node-addon-api').include_dir\")",
        "../bpf"
      ],
      "defines": ["NAPI_VERSION=8", "NAPI_CPP_EXCEPTIONS"],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions"],
      "cflags_cc": ["-std=c++17", "-Wall", "-Wextra", "-Werror", "-Wno-unused-parameter", "-fexceptions"],
      "libraries": ["-lbpf", "-lelf", "-lz"]
    }
  ]
}
