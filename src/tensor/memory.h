#pragma once
// Large buffers backed by transparent huge pages.
//
// The decoder's dW product reads the V x T*B gradient of the logits one row
// at a time: each step along its depth moves V floats (40 KB at V = 10000),
// so on 4 KiB pages nearly every load touches another page and misses the
// first-level TLB. On 2 MiB pages the 28 MB of logits at V = 10000 and
// T*B = 700 take 14 TLB entries. Linux in its "madvise" mode (Debian's
// default) backs a range with huge pages when madvise(MADV_HUGEPAGE) marks it
// before its first touch. Elsewhere the advice changes nothing.

#include <cstddef>

#include "tensor/types.h"

namespace lstm {

// Marks the whole 2 MiB pages inside [data, data + bytes) for huge pages.
// Call it before the memory is first written.
void advise_huge_pages(void* data, std::size_t bytes);

// Returns zero-filled buffers, with huge pages advised before the zeros are written.
Matrix zero_matrix(Eigen::Index rows, Eigen::Index cols);
Vector zero_vector(Eigen::Index size);

}  // namespace lstm
