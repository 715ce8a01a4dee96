# keyline_embed_migrations(<target> <dir> <cxx-namespace>): compiles <dir>/NNNN_*.sql into <target> as
#   const std::vector<keyline::core::Migration>& <cxx-namespace>::embedded_migrations();
# so that `<program> migrate` needs no files at run time.
function(keyline_embed_migrations target dir ns)
  file(GLOB files CONFIGURE_DEPENDS ${dir}/*.sql)
  list(SORT files)
  set(gen "// Generated from ${dir}/*.sql by keyline_embed_migrations.\n#include <vector>\n#include \"keyline/core/migrate.h\"\n\nnamespace ${ns} {\n\nconst std::vector<keyline::core::Migration>& embedded_migrations() {\n  static const std::vector<keyline::core::Migration> all = {\n")
  foreach(f ${files})
    file(READ ${f} content)
    get_filename_component(name ${f} NAME)
    string(APPEND gen "      {\"${name}\", R\"KLSQL(${content})KLSQL\"},\n")
  endforeach()
  string(APPEND gen "  };\n  return all;\n}\n\n}  // namespace ${ns}\n")
  set(out ${CMAKE_CURRENT_BINARY_DIR}/${target}_migrations.cpp)
  file(WRITE ${out}.in "${gen}")
  configure_file(${out}.in ${out} COPYONLY)
  target_sources(${target} PRIVATE ${out})
endfunction()
