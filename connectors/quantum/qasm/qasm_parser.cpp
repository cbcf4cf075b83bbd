#include "connectors/quantum/qasm/qasm_parser.hpp"

#include <cmath>
#include <cstdlib>
#include <map>
#include <string>
#include <unordered_map>
#include <unordered_set>

namespace scigate::quantum {
namespace {

// --- lexer -----------------------------------------------------------------------------------

enum class Tok { kIdent, kInt, kReal, kString, kSymbol, kEnd };

struct Token {
  Tok kind = Tok::kEnd;
  std::string text;
  int line = 1, col = 1;
};

bool ident_start(unsigned char c) { return std::isalpha(c) || c == '_' || c >= 0x80; }
bool ident_char(unsigned char c) { return std::isalnum(c) || c == '_' || c >= 0x80; }

std::string where(int line, int col) { return "line " + std::to_string(line) + ", column " + std::to_string(col) + ": "; }

// Tokenises the whole source first: sources are bounded in size, and a token vector makes
// the parser's look-ahead trivial.
bool lex(std::string_view s, std::vector<Token>& out, Error& err) {
  int line = 1, col = 1;
  std::size_t i = 0;
  auto advance = [&](std::size_t n) {
    for (std::size_t k = 0; k < n && i < s.size(); ++k, ++i) {
      if (s[i] == '\n') ++line, col = 1;
      else if ((static_cast<unsigned char>(s[i]) & 0xC0) != 0x80) ++col;  // UTF-8 continuation bytes take no column
    }
  };
  while (i < s.size()) {
    unsigned char c = s[i];
    if (c == '\n' || c == ' ' || c == '\t' || c == '\r' || c == '\f' || c == '\v') { advance(1); continue; }
    if (c == '/' && i + 1 < s.size() && s[i + 1] == '/') {
      while (i < s.size() && s[i] != '\n') advance(1);
      continue;
    }
    if (c == '/' && i + 1 < s.size() && s[i + 1] == '*') {
      int l0 = line, c0 = col;
      advance(2);
      while (i < s.size() && !(s[i] == '*' && i + 1 < s.size() && s[i + 1] == '/')) advance(1);
      if (i >= s.size()) {
        err = Error::invalid_arguments(where(l0, c0) + "comment is never closed", "end it with */");
        return false;
      }
      advance(2);
      continue;
    }
    Token t;
    t.line = line, t.col = col;
    std::size_t start = i;
    if (ident_start(c) || (c == '$' && i + 1 < s.size() && std::isdigit(static_cast<unsigned char>(s[i + 1])))) {
      if (c == '$') {
        advance(1);
        while (i < s.size() && std::isdigit(static_cast<unsigned char>(s[i]))) advance(1);
      } else {
        while (i < s.size() && ident_char(s[i])) advance(1);
      }
      t.kind = Tok::kIdent;
    } else if (std::isdigit(c) || (c == '.' && i + 1 < s.size() && std::isdigit(static_cast<unsigned char>(s[i + 1])))) {
      bool real = false;
      while (i < s.size() && std::isdigit(static_cast<unsigned char>(s[i]))) advance(1);
      if (i < s.size() && s[i] == '.') {
        real = true;
        advance(1);
        while (i < s.size() && std::isdigit(static_cast<unsigned char>(s[i]))) advance(1);
      }
      if (i < s.size() && (s[i] == 'e' || s[i] == 'E')) {
        std::size_t j = i + 1;
        if (j < s.size() && (s[j] == '+' || s[j] == '-')) ++j;
        if (j < s.size() && std::isdigit(static_cast<unsigned char>(s[j]))) {
          real = true;
          advance(j - i);
          while (i < s.size() && std::isdigit(static_cast<unsigned char>(s[i]))) advance(1);
        }
      }
      t.kind = real ? Tok::kReal : Tok::kInt;
    } else if (c == '"') {
      advance(1);
      while (i < s.size() && s[i] != '"' && s[i] != '\n') advance(1);
      if (i >= s.size() || s[i] != '"') {
        err = Error::invalid_arguments(where(t.line, t.col) + "string is never closed", "end it with \" on the same line");
        return false;
      }
      advance(1);
      t.kind = Tok::kString;
      t.text = std::string(s.substr(start + 1, i - start - 2));
      out.push_back(std::move(t));
      continue;
    } else {
      static constexpr std::string_view kTwo[] = {"->", "==", "!="};
      t.kind = Tok::kSymbol;
      bool two = false;
      for (auto sym : kTwo)
        if (s.substr(i, 2) == sym) two = true;
      if (two) {
        advance(2);
      } else if (std::string_view(";,()[]{}+-*/^=@:!").find(static_cast<char>(c)) != std::string_view::npos) {
        advance(1);
      } else {
        std::string shown = std::isprint(c) ? std::string(1, static_cast<char>(c)) : "byte " + std::to_string(c);
        err = Error::invalid_arguments(where(t.line, t.col) + "unexpected character '" + shown + "'");
        return false;
      }
    }
    t.text = std::string(s.substr(start, i - start));
    out.push_back(std::move(t));
  }
  Token end;
  end.kind = Tok::kEnd;
  end.line = line, end.col = col;
  out.push_back(end);
  return true;
}

// --- expressions -----------------------------------------------------------------------------

enum class ExprKind { kNumber, kParam, kNeg, kAdd, kSub, kMul, kDiv, kPow, kSin, kCos, kTan, kExp, kLn, kSqrt };

struct Expr {
  ExprKind kind = ExprKind::kNumber;
  double value = 0;
  int param = -1;
  int a = -1, b = -1;
  int height = 1;  // of the tree below: eval() recurses this deep
};

struct ExprPool {
  std::vector<Expr> nodes;
  int add(Expr e) {
    e.height = 1 + std::max(e.a >= 0 ? nodes[e.a].height : 0, e.b >= 0 ? nodes[e.b].height : 0);
    nodes.push_back(e);
    return static_cast<int>(nodes.size()) - 1;
  }
  int height(int i) const { return nodes[i].height; }
  double eval(int i, std::span<const double> params) const {
    const Expr& e = nodes[i];
    switch (e.kind) {
      case ExprKind::kNumber: return e.value;
      case ExprKind::kParam: return params[e.param];
      case ExprKind::kNeg: return -eval(e.a, params);
      case ExprKind::kAdd: return eval(e.a, params) + eval(e.b, params);
      case ExprKind::kSub: return eval(e.a, params) - eval(e.b, params);
      case ExprKind::kMul: return eval(e.a, params) * eval(e.b, params);
      case ExprKind::kDiv: return eval(e.a, params) / eval(e.b, params);
      case ExprKind::kPow: return std::pow(eval(e.a, params), eval(e.b, params));
      case ExprKind::kSin: return std::sin(eval(e.a, params));
      case ExprKind::kCos: return std::cos(eval(e.a, params));
      case ExprKind::kTan: return std::tan(eval(e.a, params));
      case ExprKind::kExp: return std::exp(eval(e.a, params));
      case ExprKind::kLn: return std::log(eval(e.a, params));
      case ExprKind::kSqrt: return std::sqrt(eval(e.a, params));
    }
    return 0;
  }
};

// --- gate definitions ------------------------------------------------------------------------

struct BodyCall {
  std::string name;
  std::vector<int> params;  // expression roots in the definition's pool
  std::vector<int> qargs;   // indices into the definition's qubit arguments
  int line = 0, col = 0;
};

struct GateDef {
  std::string name;
  int num_params = 0, num_qubits = 0;
  bool opaque = false;
  const StandardGate* native = nullptr;  // simulated from its matrix, not from its body
  ExprPool exprs;
  std::vector<BodyCall> body;
};

struct Operand {  // one argument of a statement: a whole register or one bit of it
  Register reg;  // a copy: physical qubits ($3) declare registers while a statement is parsed
  int index = -1;  // -1: the whole register
  int line = 0, col = 0;
};

class Parser {
 public:
  Parser(std::vector<Token> tokens, QasmVersion version, const QasmLimits& limits)
      : toks_(std::move(tokens)), version_(version), limits_(limits) {}

  bool run(ParsedCircuit& out) {
    if (!header()) return false;
    while (peek().kind != Tok::kEnd)
      if (!statement()) return false;
    out.version = version_;
    out.circuit = std::move(circuit_);
    return true;
  }
  Error error() const { return error_; }

 private:
  // --- token helpers -------------------------------------------------------------------------
  const Token& peek(std::size_t ahead = 0) const { return toks_[std::min(pos_ + ahead, toks_.size() - 1)]; }
  const Token& next() {
    const Token& t = toks_[pos_];
    if (pos_ + 1 < toks_.size()) ++pos_;
    return t;
  }
  bool is(const char* sym, std::size_t ahead = 0) const {
    const Token& t = peek(ahead);
    return (t.kind == Tok::kSymbol || t.kind == Tok::kIdent) && t.text == sym;
  }
  static std::string describe(const Token& t) {
    if (t.kind == Tok::kEnd) return "the end of the program";
    return "'" + t.text + "'";
  }
  bool fail(const Token& t, const std::string& msg, std::string hint = {}) {
    if (error_.message.empty()) error_ = Error::invalid_arguments(where(t.line, t.col) + msg, std::move(hint));
    return false;
  }
  bool expect(const char* sym, const char* after) {
    if (is(sym)) {
      next();
      return true;
    }
    std::string hint = std::string(sym) == ";" ? "end each statement with ';'" : "";
    return fail(peek(), std::string("expected '") + sym + "' " + after + ", found " + describe(peek()), hint);
  }
  bool ident(std::string& name, const char* what) {
    if (peek().kind != Tok::kIdent) return fail(peek(), std::string("expected ") + what + ", found " + describe(peek()));
    name = next().text;
    return true;
  }
  bool integer(int64_t& v, const char* what) {
    if (peek().kind != Tok::kInt) return fail(peek(), std::string("expected ") + what + " (an integer), found " + describe(peek()));
    const Token& t = next();
    if (t.text.size() > 15) return fail(t, std::string(what) + " " + t.text + " is too large");
    v = std::strtoll(t.text.c_str(), nullptr, 10);
    return true;
  }
  bool v3() const { return version_ == QasmVersion::kV3; }

  // --- program structure ---------------------------------------------------------------------
  bool header() {
    if (!is("OPENQASM")) {
      if (version_ == QasmVersion::kAuto) version_ = QasmVersion::kV2;
      return true;
    }
    const Token& kw = next();
    const Token& v = next();
    QasmVersion found;
    if ((v.kind == Tok::kReal || v.kind == Tok::kInt) && (v.text == "2.0" || v.text == "2")) found = QasmVersion::kV2;
    else if ((v.kind == Tok::kReal || v.kind == Tok::kInt) && (v.text == "3.0" || v.text == "3")) found = QasmVersion::kV3;
    else return fail(v, "unsupported OpenQASM version " + describe(v), "use OPENQASM 2.0; or OPENQASM 3.0;");
    if (version_ != QasmVersion::kAuto && version_ != found)
      return fail(kw, std::string("the program says OpenQASM ") + (found == QasmVersion::kV2 ? "2" : "3") +
                          " but language asks for OpenQASM " + (version_ == QasmVersion::kV2 ? "2" : "3"),
                  "set language to match the program, or leave it out to detect it");
    version_ = found;
    return expect(";", std::string("after 'OPENQASM " + v.text + "'").c_str());
  }

  bool statement() {
    const Token& t = peek();
    if (t.kind != Tok::kIdent) return fail(t, "expected a statement, found " + describe(t));
    const std::string& w = t.text;
    if (w == "include") return include();
    if (w == "qreg" || w == "creg") return old_declaration();
    if (w == "qubit" || w == "bit") return new_declaration();
    if (w == "gate") return gate_definition(false);
    if (w == "opaque") return gate_definition(true);
    if (w == "if") return if_statement();
    if (w == "OPENQASM") return fail(t, "OPENQASM must be the first statement");
    static const std::unordered_set<std::string> kUnsupported = {
        "for", "while", "def", "defcal", "cal", "const", "int", "uint", "float", "angle", "bool", "complex",
        "input", "output", "let", "box", "delay", "duration", "stretch", "array", "switch", "return",
        "ctrl", "negctrl", "inv", "pow", "extern", "break", "continue", "else", "durationof", "pragma"};
    if (kUnsupported.count(w))
      return fail(t, "'" + w + "' is OpenQASM 3 beyond the subset this server runs",
                  "supported: qubit/bit declarations, gate definitions, gate calls with parameters, measure, reset, "
                  "barrier, if on bits or registers");
    return quantum_statement(std::nullopt);
  }

  bool include() {
    next();
    if (peek().kind != Tok::kString) return fail(peek(), "expected a file name in quotes after include");
    const Token& file = next();
    if (!expect(";", "after the include")) return false;
    if (file.text != "qelib1.inc" && file.text != "stdgates.inc")
      return fail(file, "cannot include \"" + file.text + "\"", "only qelib1.inc (OpenQASM 2) and stdgates.inc (OpenQASM 3) are available");
    return load_standard_library();
  }

  // Both headers make every standard gate available: stdgates.inc is a subset of the gates
  // qelib1.inc's extended form defines, and the names agree.
  bool load_standard_library() {
    if (stdlib_loaded_) return true;
    stdlib_loaded_ = true;
    for (const auto& g : standard_gates()) {
      if (g.name == "U" || g.name == "CX") continue;
      GateDef d;
      d.name = std::string(g.name);
      d.num_params = g.num_params;
      d.num_qubits = g.num_controls + g.num_targets;
      d.native = &g;
      gates_[d.name] = std::move(d);
    }
    // The extension's bodies use the standard gates, so parse them with a sub-parser over the
    // same gate table.
    std::vector<Token> toks;
    Error err;
    if (!lex(qelib1_extension_source(), toks, err)) return fail(peek(), "internal: " + err.message);
    Parser sub(std::move(toks), QasmVersion::kV2, limits_);
    sub.gates_ = std::move(gates_);
    sub.stdlib_loaded_ = true;
    while (sub.peek().kind != Tok::kEnd)
      if (!sub.statement()) return fail(peek(), "internal: " + sub.error_.message);
    gates_ = std::move(sub.gates_);
    return true;
  }

  bool declare(std::vector<Register>& regs, int& count, int limit, const Token& at, std::string name, int64_t size,
               const char* kind) {
    if (size <= 0) return fail(at, std::string(kind) + " register '" + name + "' must have at least one bit");
    if (find_register(name)) return fail(at, "'" + name + "' is already declared");
    if (gates_.count(name)) return fail(at, "'" + name + "' is already the name of a gate");
    if (count + size > limit)
      return fail(at, "too many " + std::string(kind) + "s: this server accepts at most " + std::to_string(limit));
    regs.push_back(Register{std::move(name), count, static_cast<int>(size)});
    count += static_cast<int>(size);
    return true;
  }

  bool old_declaration() {
    const Token& kw = next();
    bool quantum = kw.text == "qreg";
    std::string name;
    int64_t size = 0;
    if (!ident(name, "a register name") || !expect("[", "after the register name") || !integer(size, "a register size") ||
        !expect("]", "after the register size") || !expect(";", "after the declaration"))
      return false;
    return quantum ? declare(circuit_.qregs, circuit_.num_qubits, limits_.max_qubits, kw, name, size, "qubit")
                   : declare(circuit_.cregs, circuit_.num_clbits, limits_.max_clbits, kw, name, size, "classical bit");
  }

  bool new_declaration() {
    const Token& kw = next();
    bool quantum = kw.text == "qubit";
    int64_t size = 1;
    if (is("[")) {
      next();
      if (!integer(size, "a register size") || !expect("]", "after the register size")) return false;
    }
    std::string name;
    if (!ident(name, "a register name")) return false;
    if (is("=")) return fail(peek(), "initialising a declaration is not supported", "declare, then use 'c = measure q;'");
    if (!expect(";", "after the declaration")) return false;
    return quantum ? declare(circuit_.qregs, circuit_.num_qubits, limits_.max_qubits, kw, name, size, "qubit")
                   : declare(circuit_.cregs, circuit_.num_clbits, limits_.max_clbits, kw, name, size, "classical bit");
  }

  const Register* find_register(const std::string& name) const {
    for (const auto& r : circuit_.qregs)
      if (r.name == name) return &r;
    for (const auto& r : circuit_.cregs)
      if (r.name == name) return &r;
    return nullptr;
  }
  bool is_qreg(const Register* r) const { return r >= circuit_.qregs.data() && r < circuit_.qregs.data() + circuit_.qregs.size(); }

  bool gate_definition(bool opaque) {
    next();
    const Token& name_tok = peek();
    GateDef d;
    d.opaque = opaque;
    if (!ident(d.name, "a gate name")) return false;
    if (d.name == "U" || d.name == "CX" || d.name == "gphase" || d.name == "measure" || d.name == "reset" || d.name == "barrier")
      return fail(name_tok, "'" + d.name + "' is built in and cannot be redefined");
    if (auto it = gates_.find(d.name); it != gates_.end()) {
      // Programs written for older Qiskit headers define extended gates themselves; theirs wins.
      // A gate of the published header or of the program itself cannot be defined twice.
      bool extended = it->second.native && qelib1_source().find("gate " + d.name + " ") == std::string_view::npos &&
                      qelib1_source().find("gate " + d.name + "(") == std::string_view::npos;
      if (!extended) return fail(name_tok, "gate '" + d.name + "' is already defined");
    }
    std::map<std::string, int> params, qargs;
    if (is("(")) {
      next();
      if (!is(")")) {
        for (;;) {
          std::string p;
          if (!ident(p, "a parameter name")) return false;
          if (is(":")) return fail(peek(), "typed gate parameters are not supported", "write gate g(theta) q { ... }");
          params.emplace(p, static_cast<int>(params.size()));
          if (!is(",")) break;
          next();
        }
      }
      if (!expect(")", "after the gate's parameters")) return false;
    }
    for (;;) {
      const Token& at = peek();
      std::string q;
      if (!ident(q, "a qubit argument name")) return false;
      if (qargs.count(q)) return fail(at, "qubit argument '" + q + "' is listed twice");
      qargs.emplace(q, static_cast<int>(qargs.size()));
      if (!is(",")) break;
      next();
    }
    d.num_params = static_cast<int>(params.size());
    d.num_qubits = static_cast<int>(qargs.size());
    if (opaque) {
      if (!expect(";", "after the opaque declaration")) return false;
      gates_[d.name] = std::move(d);
      return true;
    }
    if (!expect("{", "to open the gate's body")) return false;
    while (!is("}")) {
      if (peek().kind == Tok::kEnd) return fail(peek(), "gate '" + d.name + "' is never closed", "end its body with '}'");
      if (!body_statement(d, params, qargs)) return false;
    }
    next();
    gates_[d.name] = std::move(d);
    return true;
  }

  bool body_statement(GateDef& d, const std::map<std::string, int>& params, const std::map<std::string, int>& qargs) {
    const Token& t = peek();
    if (t.kind != Tok::kIdent) return fail(t, "expected a gate call in the body of '" + d.name + "', found " + describe(t));
    if (t.text == "barrier") {  // no effect on a simulator; kept out of the expansion
      next();
      while (!is(";") && peek().kind != Tok::kEnd) next();
      return expect(";", "after barrier");
    }
    if (t.text == "measure" || t.text == "reset" || t.text == "if")
      return fail(t, "'" + t.text + "' is not allowed inside a gate definition");
    BodyCall call;
    call.name = next().text;
    call.line = t.line, call.col = t.col;
    if (call.name != "gphase" && !gates_.count(call.name) && !is_builtin(call.name))
      return unknown_gate(t);
    if (is("(")) {
      next();
      if (!is(")")) {
        for (;;) {
          int root = -1;
          if (!expression(d.exprs, &params, root, 0)) return false;
          call.params.push_back(root);
          if (!is(",")) break;
          next();
        }
      }
      if (!expect(")", "after the gate's parameters")) return false;
    }
    if (call.name != "gphase") {
      for (;;) {
        const Token& a = peek();
        std::string q;
        if (!ident(q, "a qubit argument")) return false;
        auto it = qargs.find(q);
        if (it == qargs.end()) return fail(a, "'" + q + "' is not a qubit argument of gate '" + d.name + "'");
        if (is("[")) return fail(peek(), "qubit arguments of a gate cannot be indexed");
        call.qargs.push_back(it->second);
        if (!is(",")) break;
        next();
      }
    }
    if (!expect(";", "after the gate call")) return false;
    if (!check_arity(t, call.name, call.params.size(), call.qargs.size())) return false;
    for (std::size_t i = 0; i < call.qargs.size(); ++i)
      for (std::size_t j = i + 1; j < call.qargs.size(); ++j)
        if (call.qargs[i] == call.qargs[j]) return fail(t, "the same qubit is used twice in one call of '" + call.name + "'");
    d.body.push_back(std::move(call));
    return true;
  }

  bool is_builtin(const std::string& name) const { return name == "U" || name == "CX"; }

  bool unknown_gate(const Token& t) {
    std::string hint = stdlib_loaded_ ? "define it with 'gate " + t.text + " q { ... }' before using it"
                                      : std::string("include \"") + (v3() ? "stdgates.inc" : "qelib1.inc") +
                                            "\" for the standard gates, or define it with 'gate " + t.text + " q { ... }'";
    return fail(t, "unknown gate '" + t.text + "'", hint);
  }

  bool check_arity(const Token& at, const std::string& name, std::size_t nparams, std::size_t nqubits) {
    int want_p = 0, want_q = 0;
    if (name == "gphase") want_p = 1, want_q = 0;
    else if (name == "U") want_p = 3, want_q = 1;
    else if (name == "CX") want_p = 0, want_q = 2;
    else {
      const GateDef& d = gates_.at(name);
      want_p = d.num_params, want_q = d.num_qubits;
    }
    if (static_cast<int>(nparams) != want_p)
      return fail(at, "gate '" + name + "' takes " + std::to_string(want_p) + " parameter" + (want_p == 1 ? "" : "s") +
                          ", given " + std::to_string(nparams));
    if (static_cast<int>(nqubits) != want_q)
      return fail(at, "gate '" + name + "' acts on " + std::to_string(want_q) + " qubit" + (want_q == 1 ? "" : "s") +
                          ", given " + std::to_string(nqubits));
    return true;
  }

  bool height_ok(const ExprPool& pool, int node) {
    if (pool.height(node) <= limits_.max_expression_height) return true;
    return fail(peek(), "expression has more than " + std::to_string(limits_.max_expression_height) + " operations in a chain",
                "compute the value beforehand and write the number");
  }

  // expression := term (('+'|'-') term)*; term := unary (('*'|'/') unary)*;
  // unary := '-' unary | '+' unary | power; power := primary ('^' unary)?  (so -2^2 is -4)
  bool expression(ExprPool& pool, const std::map<std::string, int>* params, int& out, int depth) {
    if (depth > limits_.max_expression_depth) return fail(peek(), "expression is nested too deeply");
    int lhs;
    if (!term(pool, params, lhs, depth)) return false;
    while (is("+") || is("-")) {
      ExprKind k = next().text == "+" ? ExprKind::kAdd : ExprKind::kSub;
      int rhs;
      if (!term(pool, params, rhs, depth)) return false;
      lhs = pool.add(Expr{k, 0, -1, lhs, rhs});
      if (!height_ok(pool, lhs)) return false;
    }
    out = lhs;
    return true;
  }
  bool term(ExprPool& pool, const std::map<std::string, int>* params, int& out, int depth) {
    int lhs;
    if (!unary(pool, params, lhs, depth)) return false;
    while (is("*") || is("/")) {
      ExprKind k = next().text == "*" ? ExprKind::kMul : ExprKind::kDiv;
      int rhs;
      if (!unary(pool, params, rhs, depth)) return false;
      lhs = pool.add(Expr{k, 0, -1, lhs, rhs});
      if (!height_ok(pool, lhs)) return false;
    }
    out = lhs;
    return true;
  }
  bool unary(ExprPool& pool, const std::map<std::string, int>* params, int& out, int depth) {
    if (depth > limits_.max_expression_depth) return fail(peek(), "expression is nested too deeply");
    if (is("-") || is("+")) {
      bool neg = next().text == "-";
      int a;
      if (!unary(pool, params, a, depth + 1)) return false;
      out = neg ? pool.add(Expr{ExprKind::kNeg, 0, -1, a, -1}) : a;
      return true;
    }
    int base;
    if (!primary(pool, params, base, depth)) return false;
    if (is("^")) {
      next();
      int exponent;
      if (!unary(pool, params, exponent, depth + 1)) return false;
      base = pool.add(Expr{ExprKind::kPow, 0, -1, base, exponent});
    }
    out = base;
    return true;
  }
  bool primary(ExprPool& pool, const std::map<std::string, int>* params, int& out, int depth) {
    const Token& t = peek();
    if (t.kind == Tok::kInt || t.kind == Tok::kReal) {
      next();
      out = pool.add(Expr{ExprKind::kNumber, std::strtod(t.text.c_str(), nullptr), -1, -1, -1});
      return true;
    }
    if (is("(")) {
      next();
      if (!expression(pool, params, out, depth + 1)) return false;
      return expect(")", "to close the parenthesis");
    }
    if (t.kind == Tok::kIdent) {
      next();
      static const std::unordered_map<std::string, ExprKind> kFuncs = {
          {"sin", ExprKind::kSin}, {"cos", ExprKind::kCos}, {"tan", ExprKind::kTan},
          {"exp", ExprKind::kExp}, {"ln", ExprKind::kLn},   {"sqrt", ExprKind::kSqrt}};
      if (auto f = kFuncs.find(t.text); f != kFuncs.end()) {
        if (!expect("(", ("after " + t.text).c_str())) return false;
        int a;
        if (!expression(pool, params, a, depth + 1) || !expect(")", "to close the function call")) return false;
        out = pool.add(Expr{f->second, 0, -1, a, -1});
        return true;
      }
      if (t.text == "pi" || t.text == "π") {
        out = pool.add(Expr{ExprKind::kNumber, M_PI, -1, -1, -1});
        return true;
      }
      if (v3() && (t.text == "tau" || t.text == "τ")) {
        out = pool.add(Expr{ExprKind::kNumber, 2 * M_PI, -1, -1, -1});
        return true;
      }
      if (v3() && (t.text == "euler" || t.text == "ℇ")) {
        out = pool.add(Expr{ExprKind::kNumber, M_E, -1, -1, -1});
        return true;
      }
      if (params) {
        if (auto p = params->find(t.text); p != params->end()) {
          out = pool.add(Expr{ExprKind::kParam, 0, p->second, -1, -1});
          return true;
        }
      }
      return fail(t, "unknown name '" + t.text + "' in an expression",
                  params ? "use the gate's parameters, pi, numbers and sin cos tan exp ln sqrt" : "use pi, numbers and sin cos tan exp ln sqrt");
    }
    return fail(t, "expected an expression, found " + describe(t));
  }

  // --- statements that act on qubits ---------------------------------------------------------

  bool operand(Operand& o, bool quantum) {
    const Token& t = peek();
    std::string name;
    if (!ident(name, quantum ? "a qubit or quantum register" : "a bit or classical register")) return false;
    o.line = t.line, o.col = t.col;
    if (name[0] == '$') {
      // OpenQASM 3 physical qubits, as transpiled circuits name them: each one used becomes a
      // one-qubit register, in order of first use (only the qubits used are simulated).
      if (!v3()) return fail(t, "physical qubits such as " + name + " are OpenQASM 3", "declare a qreg in OpenQASM 2");
      if (!quantum) return fail(t, "'" + name + "' is a qubit where a classical bit is expected");
      if (!find_register(name) &&
          !declare(circuit_.qregs, circuit_.num_qubits, limits_.max_qubits, t, name, 1, "qubit"))
        return false;
    }
    const Register* found = find_register(name);
    if (!found) return fail(t, "'" + name + "' is not declared", quantum ? "declare it with qreg (OpenQASM 2) or qubit[n] (OpenQASM 3)" : "declare it with creg or bit[n]");
    o.reg = *found;
    if (is_qreg(found) != quantum)
      return fail(t, "'" + name + "' is a " + (quantum ? "classical" : "quantum") + " register where a " +
                         (quantum ? "quantum" : "classical") + " one is expected");
    if (is("[")) {
      next();
      const Token& it = peek();
      int64_t idx;
      if (!integer(idx, "an index") || !expect("]", "after the index")) return false;
      if (idx >= o.reg.size)
        return fail(it, "index " + std::to_string(idx) + " is out of range for '" + name + "' of size " + std::to_string(o.reg.size),
                    "indices run from 0 to " + std::to_string(o.reg.size - 1));
      o.index = static_cast<int>(idx);
    }
    return true;
  }
  static int bit(const Operand& o, int k) { return o.reg.offset + (o.index >= 0 ? o.index : k); }
  static int width(const Operand& o) { return o.index >= 0 ? 1 : o.reg.size; }

  // The number of times a statement applies: registers broadcast, single bits repeat.
  bool broadcast_size(const Token& at, const std::vector<Operand>& ops, int& n) {
    n = 1;
    const Operand* first_reg = nullptr;
    for (const auto& o : ops) {
      if (o.index >= 0) continue;
      if (!first_reg) {
        first_reg = &o;
        n = o.reg.size;
      } else if (o.reg.size != n) {
        return fail(at, "registers '" + first_reg->reg.name + "' (size " + std::to_string(n) + ") and '" + o.reg.name +
                            "' (size " + std::to_string(o.reg.size) + ") differ in size");
      }
    }
    return true;
  }

  bool quantum_statement(std::optional<Condition> cond) {
    const Token& t = peek();
    if (t.kind != Tok::kIdent) return fail(t, "expected a statement, found " + describe(t));
    if (t.text == "barrier") {
      next();
      if (!is(";")) {
        for (;;) {
          Operand o;
          if (!operand(o, true)) return false;
          if (!is(",")) break;
          next();
        }
      }
      return expect(";", "after barrier");
    }
    if (t.text == "measure") return measure_arrow(cond);
    if (t.text == "reset") {
      next();
      Operand o;
      if (!operand(o, true) || !expect(";", "after reset")) return false;
      for (int k = 0; k < width(o); ++k) {
        Op op;
        op.kind = OpKind::kReset;
        op.name = "reset";
        op.targets = {bit(o, k)};
        op.condition = cond;
        if (!emit(t, std::move(op))) return false;
      }
      return true;
    }
    // OpenQASM 3 assignment from a measurement: c = measure q; c[i] = measure q[i];
    if (peek(1).kind == Tok::kSymbol && (peek(1).text == "=" || peek(1).text == "[")) {
      std::size_t save = pos_;
      if (find_register(t.text) && !is_qreg(find_register(t.text))) return measure_assign(cond);
      pos_ = save;
    }
    return gate_call(cond);
  }

  bool measure_pairs(const Token& at, const Operand& q, const Operand& c, std::optional<Condition> cond) {
    if (width(q) != width(c))
      return fail(at, "measuring " + std::to_string(width(q)) + " qubit(s) into " + std::to_string(width(c)) + " bit(s)",
                  "the quantum and classical sides must have the same size");
    for (int k = 0; k < width(q); ++k) {
      Op op;
      op.kind = OpKind::kMeasure;
      op.name = "measure";
      op.targets = {bit(q, k)};
      op.clbit = bit(c, k);
      op.condition = cond;
      if (!emit(at, std::move(op))) return false;
    }
    return true;
  }

  bool measure_arrow(std::optional<Condition> cond) {
    const Token& at = next();
    Operand q, c;
    if (!operand(q, true)) return false;
    if (!expect("->", "after the measured qubits")) return false;
    if (!operand(c, false) || !expect(";", "after measure")) return false;
    return measure_pairs(at, q, c, cond);
  }

  bool measure_assign(std::optional<Condition> cond) {
    const Token& at = peek();
    Operand c, q;
    if (!operand(c, false) || !expect("=", "after the classical target")) return false;
    if (!is("measure")) return fail(peek(), "only 'measure' can be assigned to bits here, found " + describe(peek()));
    next();
    if (!operand(q, true) || !expect(";", "after measure")) return false;
    return measure_pairs(at, q, c, cond);
  }

  bool gate_call(std::optional<Condition> cond) {
    const Token& t = next();
    const std::string& name = t.text;
    if (name != "gphase" && !gates_.count(name) && !is_builtin(name)) return unknown_gate(t);
    std::vector<double> params;
    if (is("(")) {
      next();
      if (!is(")")) {
        for (;;) {
          ExprPool pool;
          int root;
          if (!expression(pool, nullptr, root, 0)) return false;
          params.push_back(pool.eval(root, {}));
          if (!is(",")) break;
          next();
        }
      }
      if (!expect(")", "after the gate's parameters")) return false;
    }
    std::vector<Operand> ops;
    if (name != "gphase") {
      for (;;) {
        Operand o;
        if (!operand(o, true)) return false;
        ops.push_back(o);
        if (!is(",")) break;
        next();
      }
    }
    if (!expect(";", "after the gate call")) return false;
    if (!check_arity(t, name, params.size(), ops.size())) return false;
    int n;
    if (!broadcast_size(t, ops, n)) return false;
    std::vector<int> qubits(ops.size());
    for (int k = 0; k < n; ++k) {
      for (std::size_t j = 0; j < ops.size(); ++j) qubits[j] = bit(ops[j], k);
      for (std::size_t a = 0; a < qubits.size(); ++a)
        for (std::size_t b = a + 1; b < qubits.size(); ++b)
          if (qubits[a] == qubits[b])
            return fail(t, "gate '" + name + "' is given the same qubit twice", "each qubit of one gate call must be distinct");
      if (!apply(t, name, params, qubits, cond, 0)) return false;
    }
    return true;
  }

  bool apply(const Token& at, const std::string& name, const std::vector<double>& params, const std::vector<int>& qubits,
             const std::optional<Condition>& cond, int depth) {
    for (double p : params)
      if (!std::isfinite(p)) return fail(at, "a parameter of gate '" + name + "' is not a finite number");
    if (depth > limits_.max_gate_depth) return fail(at, "gate definitions are nested more than " + std::to_string(limits_.max_gate_depth) + " deep");
    if (++expansion_steps_ > limits_.max_expansion_steps)
      return fail(at, "gate definitions expand to more than " + std::to_string(limits_.max_expansion_steps) + " gate calls",
                  "this server runs smaller circuits");
    if (name == "gphase") {
      Op op;
      op.kind = OpKind::kGlobalPhase;
      op.name = "gphase";
      op.matrix = {std::exp(Complex(0, params[0]))};
      op.condition = cond;
      return emit(at, std::move(op));
    }
    const StandardGate* native = nullptr;
    const GateDef* def = nullptr;
    if (name == "U" || name == "CX") {
      native = find_standard_gate(name);
    } else {
      def = &gates_.at(name);
      native = def->native;
    }
    if (native) {
      Op op;
      op.kind = OpKind::kGate;
      op.name = std::string(native->name);
      op.controls.assign(qubits.begin(), qubits.begin() + native->num_controls);
      op.targets.assign(qubits.begin() + native->num_controls, qubits.end());
      op.matrix = standard_gate_matrix(native->name, params);
      op.params = params;
      op.condition = cond;
      return emit(at, std::move(op));
    }
    if (def->opaque)
      return fail(at, "gate '" + name + "' is opaque: it has no definition, so it cannot be simulated",
                  "define it with 'gate " + name + " ... { ... }' instead of opaque");
    std::vector<double> inner;
    std::vector<int> inner_qubits;
    for (const auto& call : def->body) {
      inner.clear();
      for (int root : call.params) inner.push_back(def->exprs.eval(root, params));
      inner_qubits.clear();
      for (int a : call.qargs) inner_qubits.push_back(qubits[a]);
      if (!apply(at, call.name, inner, inner_qubits, cond, depth + 1)) return false;
    }
    return true;
  }

  bool emit(const Token& at, Op op) {
    if (circuit_.ops.size() >= limits_.max_ops)
      return fail(at, "the circuit expands to more than " + std::to_string(limits_.max_ops) + " operations", "this server runs smaller circuits");
    circuit_.ops.push_back(std::move(op));
    return true;
  }

  // if (c == 3) stmt;  if (c[0]) stmt;  if (c[0] == 1) { stmts }  (the braces: OpenQASM 3)
  bool if_statement() {
    const Token& kw = next();
    if (!expect("(", "after if")) return false;
    bool negate = false;
    if (is("!")) {
      next();
      negate = true;
    }
    Operand c;
    if (!operand(c, false)) return false;
    Condition cond;
    for (int k = 0; k < width(c); ++k) cond.clbits.push_back(bit(c, k));
    if (cond.clbits.size() > 63)
      return fail(kw, "conditions on registers wider than 63 bits are not supported");
    if (is("==") || is("!=")) {
      if (negate) return fail(peek(), "write either '!' or a comparison, not both");
      if (is("!=")) return fail(peek(), "'!=' conditions are not supported", "compare with '=='");
      next();
      const Token& vt = peek();
      int64_t v;
      if (is("true") || is("false")) {
        v = next().text == "true";
      } else if (!integer(v, "a value to compare with")) {
        return false;
      }
      if (v < 0 || (cond.clbits.size() < 63 && v >= (int64_t{1} << cond.clbits.size())))
        return fail(vt, "value " + std::to_string(v) + " cannot be held in " + std::to_string(cond.clbits.size()) + " bit(s)");
      cond.value = static_cast<uint64_t>(v);
    } else {
      if (!v3() || c.index < 0) return fail(peek(), "expected '==' in the condition, found " + describe(peek()));
      cond.value = negate ? 0 : 1;
    }
    if (!expect(")", "to close the condition")) return false;
    if (is("{")) {
      if (!v3()) return fail(peek(), "braces after if are OpenQASM 3", "write one statement after if(...)");
      next();
      while (!is("}")) {
        if (peek().kind == Tok::kEnd) return fail(peek(), "the if block is never closed", "end it with '}'");
        if (!quantum_statement(cond)) return false;
      }
      next();
      if (is("else")) return fail(peek(), "'else' is not supported");
      return true;
    }
    if (is("if")) return fail(peek(), "nested if statements are not supported");
    return quantum_statement(cond);
  }

  std::vector<Token> toks_;
  std::size_t pos_ = 0;
  QasmVersion version_;
  QasmLimits limits_;
  Circuit circuit_;
  std::size_t expansion_steps_ = 0;  // apply() calls so far (limits_.max_expansion_steps)
  std::unordered_map<std::string, GateDef> gates_;
  bool stdlib_loaded_ = false;
  Error error_;
};


}  // namespace

std::variant<ParsedCircuit, Error> parse_qasm(std::string_view source, QasmVersion version, const QasmLimits& limits) {
  if (source.size() > limits.max_source_bytes)
    return Error::invalid_arguments("the program is " + std::to_string(source.size()) + " bytes; this server accepts at most " +
                                    std::to_string(limits.max_source_bytes));
  std::vector<Token> toks;
  Error err;
  if (!lex(source, toks, err)) return err;
  Parser p(std::move(toks), version, limits);
  ParsedCircuit out;
  if (!p.run(out)) return p.error();
  return out;
}

}  // namespace scigate::quantum
