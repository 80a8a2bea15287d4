"""Block-quantization kernels, one module per family; each module's BlockDType subclasses register
themselves in the dtype table when imported (``dtypes.all_dtypes`` imports every module here)."""
