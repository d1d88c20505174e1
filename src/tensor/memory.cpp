#include "tensor/memory.h"

#include <cstdint>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace lstm {

void advise_huge_pages(void* data, std::size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr std::uintptr_t kHugePage = std::uintptr_t{2} << 20;
  const auto first = reinterpret_cast<std::uintptr_t>(data);
  const std::uintptr_t begin = (first + kHugePage - 1) / kHugePage * kHugePage;
  const std::uintptr_t end = (first + bytes) / kHugePage * kHugePage;
  // The call is advice. Where the kernel declines, the buffer keeps small pages.
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#else
  (void)data;
  (void)bytes;
#endif
}

Matrix zero_matrix(Eigen::Index rows, Eigen::Index cols) {
  Matrix m(rows, cols);  // allocated, not yet written
  advise_huge_pages(m.data(), static_cast<std::size_t>(m.size()) * sizeof(float));
  m.setZero();
  return m;
}

Vector zero_vector(Eigen::Index size) {
  Vector v(size);
  advise_huge_pages(v.data(), static_cast<std::size_t>(v.size()) * sizeof(float));
  v.setZero();
  return v;
}

}  // namespace lstm
