{
  "targets": [
    {
      "target_name": "upci_shm",
      "sources": [
        "shm/native/shared_mapping.cc"
      ],
      "include_dirs": [
        "kernel/native"
      ],
      "cflags_cc": [
        "-std=c++20",
        "-Wall",
        "-Wextra",
        "-Werror",
        "-Wno-cast-function-type"
      ]
    },
    {
      "target_name": "upci_uring",
      "sources": [
        "kernel/native/uring_cmd.cc"
      ],
      "include_dirs": [
        "kernel/native"
      ],
      "cflags_cc": [
        "-std=c++20",
        "-Wall",
        "-Wextra",
        "-Werror"
      ]
    },
    {
      "target_name": "upci_irq",
      "sources": [
        "kernel/native/interrupt_watcher.cc"
      ],
      "include_dirs": [
        "kernel/native"
      ],
      "cflags_cc": [
        "-std=c++20",
        "-Wall",
        "-Wextra",
        "-Werror"
      ]
    }
  ]
}
