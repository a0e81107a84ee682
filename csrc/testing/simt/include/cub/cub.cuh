// SIMT emulation of the one CUB algorithm fussfast uses: a stable radix sort of (key, value)
// pairs on bits [begin_bit, end_bit), done with std::stable_sort on the host after checking
// that every range lies in a device buffer.
#pragma once

#include <algorithm>
#include <numeric>
#include <vector>

#include <cuda_runtime.h>

namespace cub {
struct DeviceRadixSort {
  template <class K, class V, class N>
  static cudaError_t SortPairs(void* temp, size_t& temp_bytes, const K* keys_in, K* keys_out, const V* values_in,
                               V* values_out, N n, int begin_bit = 0, int end_bit = int(sizeof(K) * 8),
                               cudaStream_t = nullptr) {
    if (temp == nullptr) {
      temp_bytes = 16;
      return cudaSuccess;
    }
    ::simt::check_range("cub::DeviceRadixSort::SortPairs temp storage", temp, temp_bytes);
    ::simt::check_range("cub::DeviceRadixSort::SortPairs keys_in", keys_in, sizeof(K) * size_t(n));
    ::simt::check_range("cub::DeviceRadixSort::SortPairs keys_out", keys_out, sizeof(K) * size_t(n));
    ::simt::check_range("cub::DeviceRadixSort::SortPairs values_in", values_in, sizeof(V) * size_t(n));
    ::simt::check_range("cub::DeviceRadixSort::SortPairs values_out", values_out, sizeof(V) * size_t(n));
    using U = std::make_unsigned_t<K>;
    const int bits = end_bit - begin_bit;
    const U mask = bits >= int(sizeof(U) * 8) ? U(~U(0)) : U((U(1) << bits) - 1);
    auto key = [&](size_t i) { return U(U(keys_in[i]) >> begin_bit) & mask; };
    std::vector<size_t> order(static_cast<size_t>(n));
    std::iota(order.begin(), order.end(), size_t(0));
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return key(a) < key(b); });
    std::vector<K> keys(static_cast<size_t>(n));
    std::vector<V> values(static_cast<size_t>(n));
    for (size_t j = 0; j < order.size(); ++j) keys[j] = keys_in[order[j]], values[j] = values_in[order[j]];
    std::copy(keys.begin(), keys.end(), keys_out);
    std::copy(values.begin(), values.end(), values_out);
    return cudaSuccess;
  }
};
}  // namespace cub
