# Guest body for tests/e2e/smoke (no vfio-user device): PCI enumeration and both module stacks.
e2e_info "pci devices (bdf id class driver):"
pci_devices
e2e_check pci-list test -n "$(ls /sys/bus/pci/devices)"

# bochs DRM stack (bochs + drm, drm_kms_helper, ttm, drm_ttm_helper, drm_vram_helper).
e2e_check modules-bochs load_module bochs
# vfio stack (vfio_pci pulls vfio_pci_core, vfio, irqbypass; type1 IOMMU backend separately).
vfio_stack() { load_module vfio_pci && load_module vfio_iommu_type1 && test -c /dev/vfio/vfio; }
e2e_check modules-vfio vfio_stack
e2e_info "modules: $(cut -d' ' -f1 /proc/modules | tr '\n' ' ')"

# Optional second part: QEMU's own bochs-display was attached (kernel arg e2e.bochs=1):
# bochs-drm must bind it and create a DRM card and the fbdev emulation's /dev/fb0.
if [ "$(e2e_arg bochs 0)" = 1 ]; then
  dev=$(pci_find 1234:1111 | head -n1)
  e2e_check bochs-present test -n "$dev"
  e2e_check bochs-bound sh -c "test \"\$(basename \"\$(readlink $dev/driver)\")\" = bochs-drm"
  e2e_check bochs-drm-card wait_for /sys/class/drm/card0 10
  e2e_check bochs-fb0 wait_for /dev/fb0 10
  e2e_info "fb0: $(cat /sys/class/graphics/fb0/name 2>/dev/null) $(cat /sys/class/graphics/fb0/virtual_size 2>/dev/null)"
fi
