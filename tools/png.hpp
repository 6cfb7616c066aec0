// A minimal RGB image and PNG writer (zlib-compressed), plus a 5x7 pixel font for labels.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace flashprefill::tools {

struct Rgb {
  uint8_t r = 0, g = 0, b = 0;
};

class Image {
 public:
  Image(int width, int height, Rgb background);
  int width() const { return width_; }
  int height() const { return height_; }
  void fill_rect(int x, int y, int w, int h, Rgb colour);
  // Draws text (digits, letters, a few symbols) with its top-left corner at (x, y); returns the
  // width.
  int draw_text(int x, int y, const std::string& text, Rgb colour, int scale = 1);
  void write_png(const std::string& path) const;  // throws flashprefill::Error on failure

 private:
  int width_, height_;
  std::vector<uint8_t> pixels_;  // RGB, row-major
};

}  // namespace flashprefill::tools
