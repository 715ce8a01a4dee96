// Where a program may take a password from: a file or the environment, never its command line.
// argv is readable by every user of the host (/proc/<pid>/cmdline, ps) and lands in shell histories,
// so a password there is disclosed the moment the program starts (docs/operations.md, "Secrets").
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include <botan/secmem.h>

namespace keyline::core {

using Secret = Botan::secure_vector<std::uint8_t>;

// The whole file, one trailing newline (LF or CRLF) removed. Throws ConfigError(Config) when the
// file cannot be read or holds no secret; the message names the file, never its contents.
Secret read_secret_file(const std::string& path);

// The value of an environment variable, empty when it is unset.
Secret secret_from_env(const char* name);

// read_secret_file(file) when file is given, else secret_from_env(env_name) (may be empty).
Secret read_secret(const std::string& file, const char* env_name);

// True when a libpq connection string carries a password: a `password` keyword in key=value form
// (PostgreSQL 15 libpq, section 34.1.1), or a password in the userinfo or a `password` query
// parameter of a postgresql:// URI (section 34.1.1.2). A string that does not parse says false:
// libpq refuses it anyway.
bool conninfo_has_password(std::string_view conninfo);

// Every value given to `option` on the command line ("--db X" and "--db=X").
std::vector<std::string> command_line_values(int argc, const char* const* argv, std::string_view option);

// Throws ConfigError(Usage) with a one-line reason when `option` appears on the command line at all
// (a flag kept only to refuse a password given there) or when one of its values is a connection
// string with a password. `instead` says where the secret may come from.
void refuse_password_on_command_line(int argc, const char* const* argv, std::string_view option,
                                     bool conninfo, const std::string& instead);

// Hands a database password to libpq as PGPASSWORD (read at every connect when the connection
// string has no password), so it never has to be spliced into a connection string of ours. Call
// before any thread starts. Does nothing for an empty secret.
void export_pgpassword(const Secret& password);

}  // namespace keyline::core
