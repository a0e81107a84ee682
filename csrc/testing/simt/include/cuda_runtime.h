// SIMT emulation: the part of the CUDA runtime API that fussfast's host code calls, on host
// memory. Device allocations are guarded buffers (see simt.h), filled with 0xff bytes so that a
// read of scratch memory nobody wrote shows up as NaN or -1.
#pragma once

#include "../simt.h"

#define CUDART_VERSION 13000

typedef struct simt_stream* cudaStream_t;

enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInvalidDevice = 101,
  cudaErrorCooperativeLaunchTooLarge = 720,
};
enum cudaMemcpyKind { cudaMemcpyHostToHost, cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost,
                      cudaMemcpyDeviceToDevice, cudaMemcpyDefault };
enum cudaDeviceAttr {
  cudaDevAttrMaxSharedMemoryPerBlock = 8,
  cudaDevAttrMultiProcessorCount = 16,
  cudaDevAttrCooperativeLaunch = 95,
  cudaDevAttrMaxSharedMemoryPerBlockOptin = 97,
};
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
struct cudaFuncAttributes {
  size_t sharedSizeBytes;
  int maxThreadsPerBlock;
};

const char* cudaGetErrorName(cudaError_t err);
const char* cudaGetErrorString(cudaError_t err);
cudaError_t cudaGetLastError();
cudaError_t cudaPeekAtLastError();
cudaError_t cudaGetDevice(int* device);
cudaError_t cudaSetDevice(int device);
cudaError_t cudaGetDeviceCount(int* count);
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device);
cudaError_t cudaMallocAsync(void** p, size_t bytes, cudaStream_t stream);
cudaError_t cudaFreeAsync(void* p, cudaStream_t stream);
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind,
                            cudaStream_t stream);
cudaError_t cudaMemsetAsync(void* p, int value, size_t bytes, cudaStream_t stream);
cudaError_t cudaStreamSynchronize(cudaStream_t stream);
cudaError_t simt_func_set_attribute(const void* kernel, cudaFuncAttribute attr, int value);
cudaError_t simt_func_get_attributes(cudaFuncAttributes* attr, const void* kernel);
cudaError_t simt_occupancy(int* blocks, const void* kernel, int threads, size_t smem);

template <class K>
cudaError_t cudaFuncSetAttribute(K* kernel, cudaFuncAttribute attr, int value) {
  return simt_func_set_attribute(reinterpret_cast<const void*>(kernel), attr, value);
}
template <class K>
cudaError_t cudaFuncGetAttributes(cudaFuncAttributes* attr, K* kernel) {
  return simt_func_get_attributes(attr, reinterpret_cast<const void*>(kernel));
}
template <class K>
cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* blocks, K* kernel, int threads, size_t smem) {
  return simt_occupancy(blocks, reinterpret_cast<const void*>(kernel), threads, smem);
}

namespace simt {
void set_last_error(cudaError_t err);  // a launch that CUDA would refuse
}
