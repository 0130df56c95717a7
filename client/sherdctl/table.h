// A plain-text table for sherdctl output: columns sized to their widest cell.
#pragma once

#include <string>
#include <vector>

namespace sherd::ctl {

class Table {
 public:
  explicit Table(std::vector<std::string> header) { rows_.push_back(std::move(header)); }
  void Add(std::vector<std::string> row) { rows_.push_back(std::move(row)); }
  std::string Render() const;

 private:
  std::vector<std::vector<std::string>> rows_;
};

std::string HumanBytes(double bytes);
std::string HumanCount(double n);

}  // namespace sherd::ctl
