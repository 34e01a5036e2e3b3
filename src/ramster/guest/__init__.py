"""A real Linux kernel swapping on a block device, under QEMU: the guest of the tests and of `ramster bench guest`.

- `tools`     what the guest needs on the host (QEMU, a Debian kernel, busybox-static,
              musl-gcc) and which Debian package provides each
- `initramfs` builds the guest's initramfs: busybox, the virtio modules, the memory hog
              (`hog.c`, compiled with musl-gcc) and an /init that swaps onto /dev/vda
- `vm`        boots it under QEMU (TCG) with one disk, and reads the verdict off the
              serial console
"""
