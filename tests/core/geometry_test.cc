#include "core/geometry.h"

#include <doctest/doctest.h>

#include <cerrno>

#include "core/layout.h"

using namespace relayfs::core;

TEST_CASE("make_geometry accepts sizes within the limits") {
  Geometry g;
  REQUIRE(make_geometry(4096, 8, &g) == 0);
  CHECK(g.subbuf_size == 4096);
  CHECK(g.n_subbufs == 8);
  CHECK(g.data_size() == 32768);
  CHECK(make_geometry(1, 1, &g) == 0);
  CHECK(make_geometry(kMaxSubbufSize, 1, &g) == 0);
  CHECK(make_geometry(1, kMaxSubbufs, &g) == 0);
  CHECK(make_geometry(kMaxBufferBytes / kMaxSubbufs, kMaxSubbufs, &g) == 0);
}

TEST_CASE("make_geometry rejects zero sizes with EINVAL and says which") {
  Geometry g;
  std::string why;
  CHECK(make_geometry(0, 8, &g, &why) == -EINVAL);
  CHECK(why.find("subbuf_size") != std::string::npos);
  CHECK(make_geometry(4096, 0, &g, &why) == -EINVAL);
  CHECK(why.find("n_subbufs") != std::string::npos);
}

TEST_CASE("make_geometry rejects sizes above the limits with EFBIG") {
  Geometry g;
  std::string why;
  CHECK(make_geometry(kMaxSubbufSize + 1, 1, &g, &why) == -EFBIG);
  CHECK(why.find("1 GiB") != std::string::npos);
  CHECK(make_geometry(64, kMaxSubbufs + 1, &g, &why) == -EFBIG);
  CHECK(make_geometry(kMaxSubbufSize, 2, &g, &why) == -EFBIG);
  CHECK(why.find("io_uring") != std::string::npos);
  // Products that would overflow 64 bits are caught by the per-factor limits first.
  CHECK(make_geometry(~uint64_t{0}, ~uint64_t{0}, &g) == -EFBIG);
  CHECK(make_geometry(uint64_t{1} << 40, uint64_t{1} << 40, &g) == -EFBIG);
}

TEST_CASE("the layout is page aligned and holds the control area and the data") {
  Geometry g;
  SUBCASE("sizes that are not page multiples") {
    REQUIRE(make_geometry(1000, 3, &g) == 0);
  }
  SUBCASE("many small sub-buffers") {
    REQUIRE(make_geometry(64, 1000, &g) == 0);
  }
  SUBCASE("page-sized sub-buffers") {
    REQUIRE(make_geometry(4096, 4, &g) == 0);
  }
  const Layout l = Layout::of(g);
  const uint64_t ps = page_size();
  CHECK(l.data_offset % ps == 0);
  CHECK(l.total_size % ps == 0);
  CHECK(l.meta_offset >= sizeof(ShmHeader));
  CHECK(l.data_offset >= l.meta_offset + uint64_t{g.n_subbufs} * sizeof(SubbufMeta));
  CHECK(l.total_size >= l.data_offset + g.data_size());
  CHECK(l.total_size - l.data_offset - g.data_size() < ps);
}
