// Seeded watershed (priority flood) on 2-D images, 4-connected, with the
// semantics of skimage.segmentation.watershed(image, markers, mask=mask,
// compactness=c): a pixel is claimed by the marker whose flood reaches it
// first in order of (cost, push age); cost = image value (+ c * Euclidean
// distance to the claiming marker when c > 0), never below the cost of the
// pixel it was reached from. Neighbours are visited up, left, right, down.
//
// Why not skimage's: cell finding floods every tissue pixel twice (nuclei and
// cell territories) and skimage's heap of pointers, float64 copies and padded
// arrays made it half of the time of a block. Here the heap holds the items
// themselves (16 bytes: cost, age, pixel), no array is padded or copied, the
// GIL is released, and in the compact flood a pixel is pushed again only when
// the new cost is strictly lower than the one already pending for it (a
// later, not-lower push could never be popped first, so skipping it changes
// nothing).
//
// The plain flood's heap sifts exactly as skimage's does, so even ties
// between markers of equal cost (all pushed at age 0) are broken the same
// way; the compact flood takes such marker ties in raster order (skimage's
// heap order there is an accident of its layout).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstdlib>
#include <new>
#include <cmath>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace py = pybind11;

namespace her2kit {
namespace {

// Pixels and push ages are uint32: images up to kMaxPixels (a pixel is pushed
// at most once per neighbour, so ages stay below 5 * 2^29 < 2^32; the Python
// caller hands larger images to skimage).
constexpr int64_t kMaxPixels = (int64_t{1} << 29);

struct Item {
  double cost;
  uint32_t age;    // push order (plain: 0 for all markers; compact: markers 0..M-1 in raster order)
  uint32_t index;  // the pixel
};

// Order of the queue: (cost, age). In the compact flood ages are unique, so
// markers of equal cost come out in raster order however the queue holds them.
struct Before {
  bool operator()(const Item& a, const Item& b) const {
    return a.cost < b.cost || (a.cost == b.cost && a.age < b.age);
  }
};

// Binary min-heap of Items stored by value.
class Heap {
 public:
  bool empty() const { return items_.empty(); }
  const Item& top() const { return items_[0]; }
  void push(const Item& it) {
    size_t child = items_.size();
    items_.push_back(it);
    while (child > 0) {
      size_t parent = (child - 1) / 2;
      if (!less_(it, items_[parent])) break;
      items_[child] = items_[parent];
      child = parent;
    }
    items_[child] = it;
  }
  Item pop() {
    Item top = items_[0];
    Item last = items_.back();
    items_.pop_back();
    const size_t n = items_.size();
    if (n > 0) {
      size_t i = 0;
      for (;;) {
        size_t l = 2 * i + 1;
        if (l >= n) break;
        size_t m = (l + 1 < n && less_(items_[l + 1], items_[l])) ? l + 1 : l;
        if (!less_(items_[m], last)) break;
        items_[i] = items_[m];
        i = m;
      }
      items_[i] = last;
    }
    return top;
  }

 private:
  std::vector<Item> items_;
  Before less_;
};

inline void insertion_sort(Item* first, Item* last) {
  for (Item* i = first + 1; i < last; ++i) {
    const Item v = *i;
    Item* j = i;
    while (j > first && Before()(v, *(j - 1))) {
      *j = *(j - 1);
      --j;
    }
    *j = v;
  }
}

// Sorts [first, last) by (cost, age), with tmp (as many items) as scratch: a
// counting pass spreads the items over 256 sub-ranges of cost (a
// non-decreasing map of cost, so the order stays exact), and each sub-range
// is sorted the same way, small ones by insertion. A bucket's costs crowd
// into a few narrow clumps, so one level is not enough; std::sort of the
// runs was a quarter of a block's territory flood, this a third as much.
void sort_items(Item* first, Item* last, Item* tmp, int depth) {
  const size_t n = static_cast<size_t>(last - first);
  if (n <= 24) {
    insertion_sort(first, last);
    return;
  }
  double lo = first->cost, hi = lo;
  for (const Item* p = first; p < last; ++p) {
    lo = std::min(lo, p->cost);
    hi = std::max(hi, p->cost);
  }
  constexpr int kSub = 256;
  const double scale = kSub / (hi - lo);
  // one cost (then by age), clumped beyond 256^4, or a range too narrow to scale
  if (!(hi > lo) || depth >= 4 || !std::isfinite(scale)) {
    std::sort(first, last, Before());
    return;
  }
  auto sub = [&](double cost) {
    const double s = (cost - lo) * scale;
    return s >= kSub - 1 ? kSub - 1 : static_cast<int>(s);
  };
  uint32_t start[kSub + 1] = {};
  for (const Item* p = first; p < last; ++p) ++start[sub(p->cost) + 1];
  for (int k = 0; k < kSub; ++k) start[k + 1] += start[k];
  uint32_t next[kSub];
  std::copy(start, start + kSub, next);
  for (const Item* p = first; p < last; ++p) tmp[next[sub(p->cost)]++] = *p;
  std::copy(tmp, tmp + n, first);
  for (int k = 0; k < kSub; ++k) {
    if (start[k + 1] - start[k] > 1) sort_items(first + start[k], first + start[k + 1], tmp, depth + 1);
  }
}

// The queue of the compact flood: costs popped never decrease (a push costs at
// least what was just popped), so items wait unsorted in buckets of cost. A
// bucket's turn comes: its items are sorted once (sort_items) and taken in order, beside a
// small heap for the pushes that land in the bucket meanwhile. Sorted runs
// let the flood fetch the pixels of the next items ahead of time (the visits
// jump all over the image: each is a cache miss otherwise).
class BucketQueue {
 public:
  BucketQueue(double lo, double width, int nbuckets)
      : lo_(lo), inv_width_(1.0 / width), buckets_(static_cast<size_t>(nbuckets)) {}
  bool empty() {
    while (pos_ == run_.size() && current_.empty()) {
      if (!advance()) return true;
    }
    return false;
  }
  void push(const Item& it) {
    // any non-decreasing map of cost to bucket keeps the order exact
    const double b = std::floor((it.cost - lo_) * inv_width_);
    if (b <= static_cast<double>(cur_)) {
      current_.push(it);
    } else if (b >= static_cast<double>(buckets_.size())) {
      overflow_.push_back(it);
    } else {
      buckets_[static_cast<size_t>(b)].push_back(it);
    }
  }
  // call empty() first
  Item pop() { return from_run() ? run_[pos_++] : current_.pop(); }
  const Item& top() const { return from_run() ? run_[pos_] : current_.top(); }
  // the k-th next item of the sorted run, if any (a hint for prefetching)
  const Item* ahead(size_t k) const { return pos_ + k < run_.size() ? &run_[pos_ + k] : nullptr; }

 private:
  bool from_run() const {
    return pos_ < run_.size() && (current_.empty() || Before()(run_[pos_], current_.top()));
  }
  bool advance() {
    while (++cur_ < static_cast<int64_t>(buckets_.size())) {
      auto& b = buckets_[static_cast<size_t>(cur_)];
      if (b.empty()) continue;
      run_.clear();
      run_.swap(b);
      std::vector<Item>().swap(b);
      spare_.resize(run_.size());
      sort_items(run_.data(), run_.data() + run_.size(), spare_.data(), 0);
      pos_ = 0;
      return true;
    }
    if (overflow_.empty()) return false;
    // start a new range at the cheapest overflow item
    double lo = overflow_[0].cost;
    for (const Item& it : overflow_) lo = std::min(lo, it.cost);
    lo_ = lo;
    cur_ = -1;
    std::vector<Item> items;
    items.swap(overflow_);
    for (const Item& it : items) push(it);
    return true;
  }

  double lo_, inv_width_;
  std::vector<Item> spare_;  // sort_items' scratch
  int64_t cur_ = -1;
  std::vector<std::vector<Item>> buckets_;
  std::vector<Item> overflow_;
  std::vector<Item> run_;
  size_t pos_ = 0;
  Heap current_;
};

// Memory for the per-pixel state, on 2 MB pages where the kernel allows
// (Linux: transparent huge pages on request): the flood's visits jump all
// over tens of MB, and with 4 KB pages most of them also missed the TLB.
template <typename T>
struct HugePageAllocator {
  using value_type = T;
  HugePageAllocator() = default;
  template <typename U>
  HugePageAllocator(const HugePageAllocator<U>&) {}
  T* allocate(size_t n) {
    const size_t align = size_t{1} << 21;
    const size_t bytes = (n * sizeof(T) + align - 1) / align * align;
    void* ptr = std::aligned_alloc(align, bytes);
    if (ptr == nullptr) throw std::bad_alloc();
#ifdef MADV_HUGEPAGE
    madvise(ptr, bytes, MADV_HUGEPAGE);
#endif
    return static_cast<T*>(ptr);
  }
  void deallocate(T* ptr, size_t) { std::free(ptr); }
  template <typename U>
  bool operator==(const HugePageAllocator<U>&) const { return true; }
  template <typename U>
  bool operator!=(const HugePageAllocator<U>&) const { return false; }
};

// Per-pixel state in one place: the flood visits pixels in cost order, all
// over the image, so each visit is a cache miss; one line instead of three.
// label: -1 outside the mask (or a negative marker), 0 not reached, > 0
// claimed; in the compact flood <= -2 means queued, from the marker pixel
// -2 - label: the source of its lowest pending cost. The first push of a
// pixel to be popped is its last one (each push costs strictly less), so
// the items need not carry their source.
struct Pixel {
  double pending;  // compact: lowest cost already pushed (a later, not-lower push is skipped)
  float value;
  int32_t label;
};
using Pixels = std::vector<Pixel, HugePageAllocator<Pixel>>;

// Fetches the cache lines of pixel n and of its rows' neighbours.
inline void prefetch_around(const Pixel* p, int64_t n, int64_t W, int64_t N) {
  __builtin_prefetch(p + n);
  if (n >= W) __builtin_prefetch(p + n - W);
  if (n + W < N) __builtin_prefetch(p + n + W);
}

// How far down the sorted run the compact flood fetches pixels ahead (a
// memory latency's worth of visits; measured best between 32 and 64).
constexpr size_t kAhead = 48;

void compact_flood(Pixels& px, int64_t H, int64_t W, double compactness, BucketQueue& queue) {
  const int64_t N = H * W;
  uint32_t age = 0;
  for (int64_t i = 0; i < N; ++i) {
    if (px[i].label > 0) queue.push({static_cast<double>(px[i].value), age++, static_cast<uint32_t>(i)});
  }
  const uint32_t markers = age;
  const int64_t dy[4] = {-1, 0, 0, 1};
  const int64_t dx[4] = {0, -1, 1, 0};
  Pixel* p = px.data();
  while (!queue.empty()) {
    const Item e = queue.pop();
    if (!queue.empty()) prefetch_around(p, queue.top().index, W, N);
    if (const Item* far = queue.ahead(kAhead)) prefetch_around(p, far->index, W, N);
    const int64_t i = e.index;
    int64_t source = i;  // a marker's own item
    int32_t label = p[i].label;
    if (e.age >= markers) {
      if (label >= 0) continue;  // claimed meanwhile: a costlier, stale push
      source = -2 - static_cast<int64_t>(label);
      label = p[source].label;
      p[i].label = label;
    }
    const int64_t y = i / W, x = i % W;
    const int64_t sy = source / W, sx = source % W;
    const int32_t queued = static_cast<int32_t>(-2 - source);
    for (int k = 0; k < 4; ++k) {
      const int64_t ny = y + dy[k], nx = x + dx[k];
      if (ny < 0 || ny >= H || nx < 0 || nx >= W) continue;
      const int64_t nb = ny * W + nx;
      Pixel& q = p[nb];
      if (q.label > 0 || q.label == -1) continue;  // claimed, or outside the mask
      const double ddy = static_cast<double>(ny - sy), ddx = static_cast<double>(nx - sx);
      double cost = static_cast<double>(q.value) + compactness * std::sqrt(ddy * ddy + ddx * ddx);
      if (cost < e.cost) cost = e.cost;
      if (!(cost < q.pending)) continue;
      q.pending = cost;
      q.label = queued;
      queue.push({cost, age++, static_cast<uint32_t>(nb)});
    }
  }
}

void plain_flood(Pixels& px, int64_t H, int64_t W) {
  const int64_t N = H * W;
  Heap heap;  // sifts as skimage's heap: identical results, ties too
  for (int64_t i = 0; i < N; ++i) {
    if (px[i].label > 0) heap.push({static_cast<double>(px[i].value), 0, static_cast<uint32_t>(i)});
  }
  uint32_t age = 1;
  const int64_t dy[4] = {-1, 0, 0, 1};
  const int64_t dx[4] = {0, -1, 1, 0};
  Pixel* p = px.data();
  while (!heap.empty()) {
    const Item e = heap.pop();
    if (!heap.empty()) prefetch_around(p, heap.top().index, W, N);
    const int32_t label = p[e.index].label;
    const int64_t y = e.index / W, x = e.index % W;
    for (int k = 0; k < 4; ++k) {
      const int64_t ny = y + dy[k], nx = x + dx[k];
      if (ny < 0 || ny >= H || nx < 0 || nx >= W) continue;
      const int64_t nb = ny * W + nx;
      Pixel& q = p[nb];
      if (q.label != 0) continue;  // outside the mask (-1) or claimed
      q.label = label;  // first reach wins: no later push can cost less
      heap.push({std::max(static_cast<double>(q.value), e.cost), age++, static_cast<uint32_t>(nb)});
    }
  }
}

void flood(const float* image, int32_t* out, const uint8_t* mask, int64_t H, int64_t W,
           double compactness) {
  const int64_t N = H * W;
  if (N > kMaxPixels) throw std::invalid_argument("watershed: image larger than 2^29 pixels");
  Pixels px(static_cast<size_t>(N));
  float lo = std::numeric_limits<float>::infinity(), hi = -lo;
  for (int64_t i = 0; i < N; ++i) {
    // a negative marker blocks the flood like a pixel outside the mask
    px[i] = {std::numeric_limits<double>::infinity(), image[i], mask[i] ? std::max(out[i], -1) : -1};
    if (mask[i]) {
      // an inf or NaN cost would never leave the compact flood's overflow bucket
      if (compactness > 0 && !std::isfinite(image[i]))
        throw std::invalid_argument("watershed: image has non-finite values under the mask");
      lo = std::min(lo, image[i]);
      hi = std::max(hi, image[i]);
    }
  }
  if (compactness > 0) {
    if (!(hi >= lo)) return;  // nothing to flood
    // bucket width: 1/4096 of the image's range plus the distance cost of 64 px
    const int nb = 4096;
    const double span = static_cast<double>(hi) - lo + compactness * 64.0;
    BucketQueue queue(lo, span > 0 ? span / nb : 1.0, nb);
    compact_flood(px, H, W, compactness, queue);
  } else {
    plain_flood(px, H, W);
  }
  for (int64_t i = 0; i < N; ++i) out[i] = px[i].label < 0 ? 0 : px[i].label;
}

py::array_t<int32_t> watershed(
    py::array_t<float, py::array::c_style | py::array::forcecast> image,
    py::array_t<int32_t, py::array::c_style | py::array::forcecast> markers,
    py::array_t<bool, py::array::c_style | py::array::forcecast> mask, double compactness) {
  if (image.ndim() != 2) throw std::invalid_argument("watershed: image must be 2-D");
  const int64_t H = image.shape(0), W = image.shape(1);
  for (const py::array* a : {static_cast<py::array*>(&markers), static_cast<py::array*>(&mask)}) {
    if (a->ndim() != 2 || a->shape(0) != H || a->shape(1) != W)
      throw std::invalid_argument("watershed: markers and mask must have the image's shape");
  }
  if (!(compactness >= 0) || std::isinf(compactness))
    throw std::invalid_argument("watershed: compactness must be finite and >= 0");
  py::array_t<int32_t> out({H, W});
  const float* img = image.data();
  const int32_t* mk = markers.data();
  const uint8_t* msk = reinterpret_cast<const uint8_t*>(mask.data());
  int32_t* o = out.mutable_data();
  {
    py::gil_scoped_release release;
    for (int64_t i = 0; i < H * W; ++i) o[i] = mk[i];
    flood(img, o, msk, H, W, compactness);
  }
  return out;
}

// Pixels 4-connected to a seed pixel through pixels of the seed's own
// (nonzero) label: the pieces of each label that hold a seed.
py::array_t<bool> connected_to_seeds(
    py::array_t<int32_t, py::array::c_style | py::array::forcecast> labels,
    py::array_t<bool, py::array::c_style | py::array::forcecast> seeds) {
  if (labels.ndim() != 2 || seeds.ndim() != 2 || labels.shape(0) != seeds.shape(0) ||
      labels.shape(1) != seeds.shape(1))
    throw std::invalid_argument("connected_to_seeds: labels and seeds must be 2-D of one shape");
  const int64_t H = labels.shape(0), W = labels.shape(1);
  py::array_t<bool> out({H, W});
  const int32_t* lab = labels.data();
  const uint8_t* seed = reinterpret_cast<const uint8_t*>(seeds.data());
  uint8_t* o = reinterpret_cast<uint8_t*>(out.mutable_data());
  {
    py::gil_scoped_release release;
    std::vector<int64_t> stack;
    for (int64_t i = 0; i < H * W; ++i) {
      o[i] = seed[i] && lab[i] != 0;
      if (o[i]) stack.push_back(i);
    }
    while (!stack.empty()) {
      const int64_t p = stack.back();
      stack.pop_back();
      const int64_t y = p / W, x = p % W;
      const int64_t nbs[4] = {y > 0 ? p - W : -1, x > 0 ? p - 1 : -1, x + 1 < W ? p + 1 : -1,
                              y + 1 < H ? p + W : -1};
      for (int64_t q : nbs) {
        if (q >= 0 && !o[q] && lab[q] == lab[p]) {
          o[q] = 1;
          stack.push_back(q);
        }
      }
    }
  }
  return out;
}

// For each query pixel (ys[i], xs[i]), the first nonzero label met at the
// offsets (dy[k], dx[k]) in their given order (0 if none).
template <typename T>
py::array_t<T> first_label_at(py::array_t<T, py::array::c_style> labels,
                              py::array_t<int64_t, py::array::c_style | py::array::forcecast> ys,
                              py::array_t<int64_t, py::array::c_style | py::array::forcecast> xs,
                              py::array_t<int64_t, py::array::c_style | py::array::forcecast> dy,
                              py::array_t<int64_t, py::array::c_style | py::array::forcecast> dx) {
  if (labels.ndim() != 2 || ys.size() != xs.size() || dy.size() != dx.size())
    throw std::invalid_argument("first_label_at: 2-D labels, ys/xs and dy/dx of equal sizes");
  const int64_t H = labels.shape(0), W = labels.shape(1);
  const int64_t n = ys.size(), K = dy.size();
  py::array_t<T> out(n);
  const T* lab = labels.data();
  const int64_t *py = ys.data(), *px = xs.data(), *oy = dy.data(), *ox = dx.data();
  T* o = out.mutable_data();
  {
    py::gil_scoped_release release;
    for (int64_t i = 0; i < n; ++i) {
      T found = 0;
      for (int64_t k = 0; k < K; ++k) {
        const int64_t y = py[i] + oy[k], x = px[i] + ox[k];
        if (y < 0 || y >= H || x < 0 || x >= W) continue;
        const T v = lab[y * W + x];
        if (v != 0) {
          found = v;
          break;
        }
      }
      o[i] = found;
    }
  }
  return out;
}

// Membrane pixels to the cell on their stained side: for query pixel i, the
// cytoplasm labels within the offsets (dy, dx) around it, each with the mean
// of dab over its pixels there (summed in offset order, in double); the label
// with the highest mean (ties: the lowest label) replaces owner[i] when it
// differs and its mean is >= the owner's own mean (0 if absent) + margin.
template <typename T>
py::array_t<T> stained_side(py::array_t<T, py::array::c_style> cyto,
                            py::array_t<float, py::array::c_style | py::array::forcecast> dab,
                            py::array_t<int64_t, py::array::c_style | py::array::forcecast> ys,
                            py::array_t<int64_t, py::array::c_style | py::array::forcecast> xs,
                            py::array_t<T, py::array::c_style> owner,
                            py::array_t<int64_t, py::array::c_style | py::array::forcecast> dy,
                            py::array_t<int64_t, py::array::c_style | py::array::forcecast> dx,
                            double margin) {
  if (cyto.ndim() != 2 || dab.ndim() != 2 || cyto.shape(0) != dab.shape(0) ||
      cyto.shape(1) != dab.shape(1) || ys.size() != xs.size() || ys.size() != owner.size() ||
      dy.size() != dx.size())
    throw std::invalid_argument("stained_side: mismatched shapes");
  const int64_t H = cyto.shape(0), W = cyto.shape(1), n = ys.size(), K = dy.size();
  py::array_t<T> out(n);
  const T* lab = cyto.data();
  const float* d = dab.data();
  const int64_t *py = ys.data(), *px = xs.data(), *oy = dy.data(), *ox = dx.data();
  const T* own = owner.data();
  T* o = out.mutable_data();
  {
    py::gil_scoped_release release;
    std::vector<T> labels;
    std::vector<double> sums;
    std::vector<int64_t> counts;
    for (int64_t i = 0; i < n; ++i) {
      labels.clear();
      sums.clear();
      counts.clear();
      for (int64_t k = 0; k < K; ++k) {
        const int64_t y = py[i] + oy[k], x = px[i] + ox[k];
        if (y < 0 || y >= H || x < 0 || x >= W) continue;
        const T v = lab[y * W + x];
        if (v <= 0) continue;
        size_t j = 0;
        while (j < labels.size() && labels[j] != v) ++j;
        if (j == labels.size()) {
          labels.push_back(v);
          sums.push_back(0.0);
          counts.push_back(0);
        }
        sums[j] += static_cast<double>(d[y * W + x]);
        counts[j] += 1;
      }
      o[i] = own[i];
      if (labels.empty()) continue;
      double own_mean = 0.0, best_mean = 0.0;
      T best = 0;
      for (size_t j = 0; j < labels.size(); ++j) {
        const double mean = sums[j] / static_cast<double>(counts[j]);
        if (labels[j] == own[i]) own_mean = mean;
        if (best == 0 || mean > best_mean || (mean == best_mean && labels[j] < best)) {
          best = labels[j];
          best_mean = mean;
        }
      }
      if (best != own[i] && best_mean >= own_mean + margin) o[i] = best;
    }
  }
  return out;
}

// The order in which the compact flood's queue takes the items of one bucket
// (costs, push ages): sort_items' result, for tests against a plain sort.
py::array_t<int64_t> queue_order(py::array_t<double, py::array::c_style | py::array::forcecast> costs,
                                 py::array_t<uint32_t, py::array::c_style | py::array::forcecast> ages) {
  if (costs.ndim() != 1 || ages.ndim() != 1 || costs.shape(0) != ages.shape(0))
    throw std::invalid_argument("queue_order: costs and ages must be 1-D of one length");
  const int64_t n = costs.shape(0);
  if (n >= (int64_t{1} << 32)) throw std::invalid_argument("queue_order: too many items");
  std::vector<Item> items(static_cast<size_t>(n)), tmp(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    const double c = costs.data()[i];
    if (!std::isfinite(c)) throw std::invalid_argument("queue_order: costs must be finite");
    items[i] = {c, ages.data()[i], static_cast<uint32_t>(i)};
  }
  if (n > 0) sort_items(items.data(), items.data() + n, tmp.data(), 0);
  py::array_t<int64_t> order(n);
  for (int64_t i = 0; i < n; ++i) order.mutable_data()[i] = items[i].index;
  return order;
}

}  // namespace

void register_watershed(py::module_& m) {
  const char* side_doc = "Membrane pixels' owners after the stained-side rule (see cells.py "
                         "_claim_by_stained_side), GIL released.";
  m.def("stained_side", &stained_side<int32_t>, py::arg("cyto"), py::arg("dab"), py::arg("ys"),
        py::arg("xs"), py::arg("owner"), py::arg("dy"), py::arg("dx"), py::arg("margin"), side_doc);
  m.def("stained_side", &stained_side<int64_t>, py::arg("cyto"), py::arg("dab"), py::arg("ys"),
        py::arg("xs"), py::arg("owner"), py::arg("dy"), py::arg("dx"), py::arg("margin"), side_doc);
  const char* doc = "For each query pixel, the first nonzero label at the given offsets, in order "
                    "(0 if none); labels int32, uint32 or int64, GIL released.";
  m.def("first_label_at", &first_label_at<int32_t>, py::arg("labels"), py::arg("ys"),
        py::arg("xs"), py::arg("dy"), py::arg("dx"), doc);
  m.def("first_label_at", &first_label_at<uint32_t>, py::arg("labels"), py::arg("ys"),
        py::arg("xs"), py::arg("dy"), py::arg("dx"), doc);
  m.def("first_label_at", &first_label_at<int64_t>, py::arg("labels"), py::arg("ys"),
        py::arg("xs"), py::arg("dy"), py::arg("dx"), doc);
  m.def("connected_to_seeds", &connected_to_seeds, py::arg("labels"), py::arg("seeds"),
        "Bool mask of the pixels 4-connected to a seed through pixels of the seed's own "
        "nonzero label (int32 labels, bool seeds), GIL released.");
  m.def("queue_order", &queue_order, py::arg("costs"), py::arg("ages"),
        "Order (indices) in which the compact flood's queue takes one bucket's items: by cost, "
        "then push age (for tests).");
  m.def("watershed", &watershed, py::arg("image"), py::arg("markers"), py::arg("mask"),
        py::arg("compactness") = 0.0,
        "Seeded 4-connected watershed of a 2-D float32 image: int32 labels "
        "(skimage.segmentation.watershed semantics for markers >= 0; a negative "
        "marker is a wall; finite compactness; GIL released).");
}

}  // namespace her2kit
