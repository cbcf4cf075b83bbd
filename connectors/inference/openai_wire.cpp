#include "connectors/inference/openai_wire.hpp"

namespace scigate::inference {

bool SseParser::feed(std::string_view bytes, std::vector<SseEvent>* events) {
  // A line at a time, not a byte at a time: the run up to the next CR or LF is appended whole.
  std::size_t i = 0;
  const std::size_t n = bytes.size();
  while (i < n) {
    if (last_cr_) {  // the previous piece ended a line with \r: a \n next is the rest of \r\n
      last_cr_ = false;
      if (bytes[i] == '\n') {
        ++i;
        continue;
      }
    }
    std::size_t end = i;
    while (end < n && bytes[end] != '\n' && bytes[end] != '\r') ++end;
    line_.append(bytes.data() + i, end - i);
    if (line_.size() + data_.size() + error_.size() > max_) return false;
    if (end == n) break;  // the line goes on in the next piece
    last_cr_ = bytes[end] == '\r';
    end_line(events);
    i = end + 1;
  }
  return true;
}

void SseParser::end_line(std::vector<SseEvent>* events) {
  if (line_.empty()) {  // dispatch
    if (has_error_) events->push_back(SseEvent{std::move(error_), true});
    if (has_data_) events->push_back(SseEvent{std::move(data_), false});
    data_.clear();
    error_.clear();
    has_data_ = has_error_ = false;
    return;
  }
  std::string_view l(line_);
  if (l.front() != ':') {
    auto colon = l.find(':');
    std::string_view field = l.substr(0, colon);
    std::string_view value = colon == std::string_view::npos ? std::string_view() : l.substr(colon + 1);
    if (!value.empty() && value.front() == ' ') value.remove_prefix(1);
    if (field == "data") {
      if (has_data_) data_.push_back('\n');
      data_.append(value);
      has_data_ = true;
    } else if (field == "error") {
      if (has_error_) error_.push_back('\n');
      error_.append(value);
      has_error_ = true;
    }
  }
  line_.clear();
}

std::optional<UpstreamError> parse_error(const json& body) {
  if (!body.is_object()) return std::nullopt;
  const json* e = nullptr;
  if (auto it = body.find("error"); it != body.end() && it->is_object()) e = &*it;
  else if (auto o = body.find("object"); o != body.end() && o->is_string() && o->get_ref<const std::string&>() == "error")
    e = &body;
  // The bare error object (llama.cpp's `error:` stream field): a message with a code or type.
  else if (body.contains("message") && body["message"].is_string() && (body.contains("code") || body.contains("type")) &&
           !body.contains("choices"))
    e = &body;
  if (!e) {
    // A bare string error ({"error": "..."}), as some proxies answer.
    if (auto it = body.find("error"); it != body.end() && it->is_string())
      return UpstreamError{it->get<std::string>(), "", 0};
    return std::nullopt;
  }
  UpstreamError out;
  if (auto m = e->find("message"); m != e->end() && m->is_string()) out.message = m->get<std::string>();
  if (auto t = e->find("type"); t != e->end() && t->is_string()) out.type = t->get<std::string>();
  if (auto c = e->find("code"); c != e->end() && c->is_number_integer()) out.code = c->get<int>();
  if (out.message.empty()) out.message = e->dump();
  return out;
}

std::optional<UpstreamError> parse_error_text(std::string_view body) {
  json j = json::parse(body, nullptr, false);
  if (j.is_discarded()) return std::nullopt;
  return parse_error(j);
}

std::optional<TokenUsage> parse_usage(const json& body) {
  if (!body.is_object()) return std::nullopt;
  auto u = body.find("usage");
  if (u == body.end() || !u->is_object()) return std::nullopt;
  auto p = u->find("prompt_tokens");
  if (p == u->end() || !p->is_number_integer()) return std::nullopt;
  TokenUsage out;
  out.prompt_tokens = std::max<int64_t>(0, p->get<int64_t>());
  if (auto c = u->find("completion_tokens"); c != u->end() && c->is_number_integer())
    out.completion_tokens = std::max<int64_t>(0, c->get<int64_t>());
  return out;
}

namespace {
const json* first_choice(const json& body) {
  if (!body.is_object()) return nullptr;
  auto c = body.find("choices");
  if (c == body.end() || !c->is_array() || c->empty() || !(*c)[0].is_object()) return nullptr;
  return &(*c)[0];
}
}  // namespace

ChunkDelta chunk_delta(const json& chunk) {
  ChunkDelta out;
  const json* choice = first_choice(chunk);
  if (!choice) return out;
  if (auto f = choice->find("finish_reason"); f != choice->end() && f->is_string()) out.finish_reason = f->get<std::string>();
  if (auto d = choice->find("delta"); d != choice->end() && d->is_object()) {
    if (auto c = d->find("content"); c != d->end() && c->is_string()) {
      out.text = c->get<std::string>();
      out.has_content = !out.text.empty();
    }
    if (auto tc = d->find("tool_calls"); tc != d->end() && tc->is_array() && !tc->empty()) out.has_content = true;
    // A reasoning model's thinking (vLLM's reasoning_content, llama.cpp's and newer vLLM's
    // reasoning) is generated output too: a stream cut during it still pays for it.
    for (const char* k : {"reasoning_content", "reasoning"})
      if (auto r = d->find(k); r != d->end() && r->is_string() && !r->get_ref<const std::string&>().empty())
        out.has_content = true;
  } else if (auto t = choice->find("text"); t != choice->end() && t->is_string()) {  // /v1/completions
    out.text = t->get<std::string>();
    out.has_content = !out.text.empty();
  }
  return out;
}

ChunkDelta answer_delta(const json& body) {
  ChunkDelta out;
  const json* choice = first_choice(body);
  if (!choice) return out;
  if (auto f = choice->find("finish_reason"); f != choice->end() && f->is_string()) out.finish_reason = f->get<std::string>();
  if (auto m = choice->find("message"); m != choice->end() && m->is_object()) {
    if (auto c = m->find("content"); c != m->end() && c->is_string()) out.text = c->get<std::string>();
  } else if (auto t = choice->find("text"); t != choice->end() && t->is_string()) {
    out.text = t->get<std::string>();
  }
  out.has_content = !out.text.empty();
  return out;
}

void CompletionBuilder::add(const json& chunk) {
  if (!chunk.is_object()) return;
  if (id_.is_null() && chunk.contains("id")) id_ = chunk["id"];
  if (created_.is_null() && chunk.contains("created")) created_ = chunk["created"];
  if (model_.is_null() && chunk.contains("model")) model_ = chunk["model"];
  if (chunk.contains("system_fingerprint") && !chunk["system_fingerprint"].is_null()) fingerprint_ = chunk["system_fingerprint"];
  if (auto o = chunk.find("object"); o != chunk.end() && o->is_string() && o->get_ref<const std::string&>() == "text_completion")
    object_ = "text_completion";
  if (auto u = chunk.find("usage"); u != chunk.end() && u->is_object()) usage_ = *u;
  auto cs = chunk.find("choices");
  if (cs == chunk.end() || !cs->is_array()) return;
  for (const auto& c : *cs) {
    if (!c.is_object()) continue;
    // A backend's index is a small integer; anything else (a string, a negative or huge
    // number) is not a choice this builder can place.
    auto ix = c.find("index");
    if (ix != c.end() && !ix->is_number_unsigned() && !(ix->is_number_integer() && ix->get<int64_t>() >= 0)) continue;
    std::size_t index = ix == c.end() ? 0 : ix->get<std::size_t>();
    if (index > 1024) continue;
    if (choices_.size() <= index) choices_.resize(index + 1);
    Choice& ch = choices_[index];
    if (auto f = c.find("finish_reason"); f != c.end() && !f->is_null()) ch.finish_reason = *f;
    if (auto t = c.find("text"); t != c.end() && t->is_string()) {
      ch.text += t->get<std::string>();
      ch.has_content = true;
    }
    if (auto lp = c.find("logprobs"); lp != c.end() && lp->is_object()) {
      if (ch.logprobs.is_null()) ch.logprobs = json{{"content", json::array()}};
      if (auto items = lp->find("content"); items != lp->end() && items->is_array())
        for (const auto& i : *items) ch.logprobs["content"].push_back(i);
    }
    auto d = c.find("delta");
    if (d == c.end() || !d->is_object()) continue;
    if (auto r = d->find("role"); r != d->end() && r->is_string()) ch.role = r->get<std::string>();
    if (auto t = d->find("content"); t != d->end() && t->is_string()) {
      ch.content += t->get<std::string>();
      ch.has_content = true;
    }
    for (const char* key : {"reasoning_content", "reasoning"})
      if (auto t = d->find(key); t != d->end() && t->is_string()) {
        ch.reasoning += t->get<std::string>();
        ch.has_reasoning = true;
      }
    if (auto tcs = d->find("tool_calls"); tcs != d->end() && tcs->is_array()) {
      for (const auto& tc : *tcs) {
        if (!tc.is_object()) continue;
        auto ti = tc.find("index");
        if (ti != tc.end() && !ti->is_number_unsigned() && !(ti->is_number_integer() && ti->get<int64_t>() >= 0)) continue;
        std::size_t i = ti == tc.end() ? ch.tool_calls.size() : ti->get<std::size_t>();
        if (i > 1024) continue;
        while (ch.tool_calls.size() <= i)
          ch.tool_calls.push_back(json{{"id", ""}, {"type", "function"}, {"function", {{"name", ""}, {"arguments", ""}}}});
        json& call = ch.tool_calls[i];
        if (tc.contains("id") && tc["id"].is_string()) call["id"] = tc["id"];
        if (tc.contains("type") && tc["type"].is_string()) call["type"] = tc["type"];
        if (auto f = tc.find("function"); f != tc.end() && f->is_object()) {
          if (f->contains("name") && (*f)["name"].is_string())
            call["function"]["name"] = call["function"]["name"].get<std::string>() + (*f)["name"].get<std::string>();
          if (f->contains("arguments") && (*f)["arguments"].is_string())
            call["function"]["arguments"] =
                call["function"]["arguments"].get<std::string>() + (*f)["arguments"].get<std::string>();
        }
      }
    }
  }
}

json CompletionBuilder::tool_calls() const {
  return choices_.empty() ? json::array() : choices_[0].tool_calls;
}

std::string CompletionBuilder::generated_text() const {
  if (choices_.empty()) return {};
  const Choice& c = choices_[0];
  std::string out = c.text + c.content;
  if (!c.reasoning.empty()) out += (out.empty() ? "" : "\n") + c.reasoning;
  for (const auto& call : c.tool_calls) {
    const json& f = call["function"];
    out += "\n" + f.value("name", std::string()) + " " + f.value("arguments", std::string());
  }
  return out;
}

json CompletionBuilder::build() const {
  json out = json::object();
  out["id"] = id_.is_null() ? json("chatcmpl-scigate") : id_;
  out["object"] = object_;
  out["created"] = created_.is_null() ? json(0) : created_;
  out["model"] = model_;
  json choices = json::array();
  for (std::size_t i = 0; i < choices_.size(); ++i) {
    const Choice& ch = choices_[i];
    json c = json::object();
    c["index"] = i;
    if (object_ == "text_completion") {
      c["text"] = ch.text;
    } else {
      json msg = json::object();
      msg["role"] = ch.role;
      msg["content"] = ch.has_content || ch.tool_calls.empty() ? json(ch.content) : json(nullptr);
      if (ch.has_reasoning) msg["reasoning_content"] = ch.reasoning;
      if (!ch.tool_calls.empty()) msg["tool_calls"] = ch.tool_calls;
      c["message"] = std::move(msg);
    }
    c["logprobs"] = ch.logprobs;
    c["finish_reason"] = ch.finish_reason;
    choices.push_back(std::move(c));
  }
  out["choices"] = std::move(choices);
  if (!fingerprint_.is_null()) out["system_fingerprint"] = fingerprint_;
  if (!usage_.is_null()) out["usage"] = usage_;
  return out;
}

}  // namespace scigate::inference
