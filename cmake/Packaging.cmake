# Debian packages (cpack -G DEB, one per component; scripts/package.sh): every program that exists, each
# with its man page (help2man from --help), its systemd units, its example configs under /etc/keyline
# (conffiles) and its maintainer scripts (packaging/debian), plus keyline-common (docs, migrations as
# reference). Layout and choices: docs/operations.md, "Packages and services".
set(KEYLINE_PKG_DIR ${CMAKE_SOURCE_DIR}/packaging)
set(KEYLINE_DEB_REVISION 1)
set(KEYLINE_DEB_VERSION ${PROJECT_VERSION}-${KEYLINE_DEB_REVISION})

# component | target | program | Debian section | synopsis (also the man page's NAME)
set(KEYLINE_PROGRAMS
  "station|keyline_station_bin|keyline-station|admin|factory line station personalizing devices"
  "ceremony|keyline_ceremony_bin|keyline-ceremony|admin|offline root ceremony of the keyline PKI"
  "device|keyline_device_bin|keyline-device|devel|emulated keyline device and its agents"
  "backupdb|keyline_backupdb_bin|keyline-backupdb|net|public backup database and transparency log"
  "kps|keyline_kps_bin|keyline-kps|net|key provisioning server for keyline devices"
  "service|keyline_service_bin|keyline-service|net|device service server reaching shipped devices"
  "recovery|keyline_recovery_bin|keyline-recovery|utils|recovery tool restoring a keyline device")

# component | system users (postinst) | users that open a SoftHSM2 token | units | configs | Recommends
set(KEYLINE_SERVICES
  "station|keyline-station|keyline-station|keyline-station@.service|station-line1.toml line-line1.toml softhsm2-station-line1.conf|softhsm2, pcscd, postgresql"
  "backupdb|keyline-backupdb keyline-witness|keyline-backupdb|keyline-backupdb.service keyline-witness.service|backupdb.toml witness.toml softhsm2-backupdb.conf|softhsm2, postgresql"
  "kps|keyline-kps||keyline-kps.service|kps.toml|postgresql"
  "service|keyline-service|keyline-service|keyline-service.service|service.toml softhsm2-service.conf|softhsm2, postgresql")

set(KEYLINE_DESCRIPTION_station "keyline-station claims an IMEI and device keys, signs each device's
identity certificate with the Device CA key on its HSM, stores the data
package over SCP11a and publishes the backup to the public database.
keyline-station@.service runs a line.")
set(KEYLINE_DESCRIPTION_ceremony "keyline-ceremony keeps the manufacturer's root on an offline token and
signs the station's CSRs by profile into a signed ceremony log. It opens
no socket.")
set(KEYLINE_DESCRIPTION_device "keyline-device emulates a keyline device (chip, vendor identity, flash,
APDU server) and runs its KPS and service agents, for tests and
demonstrations.")
set(KEYLINE_DESCRIPTION_backupdb "keyline-backupdb serves the permanent public backup database over HTTPS
with its transparency log, and runs log monitors and witnesses (keyline-
backupdb.service, keyline-witness.service).")
set(KEYLINE_DESCRIPTION_kps "keyline-kps moves a key from one keyline device to another without
seeing it (keyline-kps.service).")
set(KEYLINE_DESCRIPTION_service "keyline-service pushes configuration items and signed modules to shipped
keyline devices over SCP03 (keyline-service.service).")
set(KEYLINE_DESCRIPTION_recovery "keyline-recovery fetches a device's record from the public database,
checks it against the transparency log and writes a flash image only
that chip can open.")
set(KEYLINE_DESCRIPTION_common "Shared files of the keyline packages: the documentation and the database
migrations (for review; the programs carry theirs compiled in).")

find_program(HELP2MAN help2man)
find_program(GZIP gzip REQUIRED)
set(KEYLINE_PKG_OUT ${CMAKE_BINARY_DIR}/packaging)
file(MAKE_DIRECTORY ${KEYLINE_PKG_OUT})

# changelog.Debian.gz, compressed as dh_compress does (-9n: no name or time stamp, reproducible).
add_custom_command(OUTPUT ${KEYLINE_PKG_OUT}/changelog.Debian.gz
  COMMAND ${GZIP} -9nc ${KEYLINE_PKG_DIR}/debian/changelog > ${KEYLINE_PKG_OUT}/changelog.Debian.gz
  DEPENDS ${KEYLINE_PKG_DIR}/debian/changelog VERBATIM)
set(KEYLINE_PKG_GENERATED ${KEYLINE_PKG_OUT}/changelog.Debian.gz)

# Every package's /usr/share/doc/<package>/ holds the copyright and the changelog (Debian Policy 12.5, 12.7).
function(keyline_package_docs component)
  set(doc share/doc/keyline-${component})
  install(FILES ${KEYLINE_PKG_DIR}/debian/copyright ${KEYLINE_PKG_OUT}/changelog.Debian.gz
    DESTINATION ${doc} COMPONENT ${component})
endfunction()

# The program, its man page (section 1) and its docs.
function(keyline_package_program component target program synopsis)
  install(TARGETS ${target} RUNTIME DESTINATION bin COMPONENT ${component})
  keyline_package_docs(${component})
  if(HELP2MAN)
    set(man ${KEYLINE_PKG_OUT}/${program}.1)
    add_custom_command(OUTPUT ${man}.gz
      COMMAND ${HELP2MAN} --no-info --no-discard-stderr --section=1 --version-string=${PROJECT_VERSION}
              "--name=${synopsis}" --output=${man} $<TARGET_FILE:${target}>
      COMMAND ${GZIP} -9nf ${man}
      DEPENDS ${target} VERBATIM)
    set_property(GLOBAL APPEND PROPERTY KEYLINE_PKG_GENERATED ${man}.gz)
    install(FILES ${man}.gz DESTINATION share/man/man1 COMPONENT ${component})
  else()
    message(STATUS "help2man not found: the packages go without man pages (scripts/setup.sh installs it)")
  endif()
endfunction()

# A maintainer script from packaging/debian/<name>.in with the component's users and units filled in.
function(keyline_maint_script component name out_var)
  configure_file(${KEYLINE_PKG_DIR}/debian/${name}.in ${KEYLINE_PKG_OUT}/${component}/${name} @ONLY
    FILE_PERMISSIONS OWNER_READ OWNER_WRITE OWNER_EXECUTE GROUP_READ GROUP_EXECUTE WORLD_READ WORLD_EXECUTE)
  set(${out_var} ${${out_var}} ${KEYLINE_PKG_OUT}/${component}/${name} PARENT_SCOPE)
endfunction()

# Units, configs (conffiles), users and the Recommends of a server's package.
function(keyline_package_service component users token_users units configs recommends)
  string(REPLACE " " ";" unit_list "${units}")
  string(REPLACE " " ";" config_list "${configs}")
  foreach(u ${unit_list})
    install(FILES ${KEYLINE_PKG_DIR}/systemd/${u} DESTINATION /lib/systemd/system COMPONENT ${component})
  endforeach()
  set(conffiles "")
  foreach(c ${config_list})
    install(FILES ${KEYLINE_PKG_DIR}/config/${c} DESTINATION /etc/keyline COMPONENT ${component})
    string(APPEND conffiles "/etc/keyline/${c}\n")
  endforeach()
  file(WRITE ${KEYLINE_PKG_OUT}/${component}/conffiles "${conffiles}")
  set(PKG keyline-${component})
  set(USERS "${users}")
  set(TOKEN_USERS "${token_users}")
  set(UNITS "${units}")
  set(extra ${KEYLINE_PKG_OUT}/${component}/conffiles)
  foreach(s postinst prerm postrm)
    keyline_maint_script(${component} ${s} extra)
  endforeach()
  string(TOUPPER ${component} C)
  set(CPACK_DEBIAN_${C}_PACKAGE_CONTROL_EXTRA "${extra}" PARENT_SCOPE)
  set(CPACK_DEBIAN_${C}_PACKAGE_RECOMMENDS "${recommends}" PARENT_SCOPE)
  set(KEYLINE_SERVICE_${C} ON PARENT_SCOPE)
endfunction()

set(KEYLINE_PKG_COMPONENTS common)
foreach(row ${KEYLINE_PROGRAMS})
  string(REPLACE "|" ";" f "${row}")
  list(GET f 0 component)
  list(GET f 1 target)
  list(GET f 2 program)
  list(GET f 3 section)
  list(GET f 4 synopsis)
  if(NOT TARGET ${target})
    continue()
  endif()
  list(APPEND KEYLINE_PKG_COMPONENTS ${component})
  keyline_package_program(${component} ${target} ${program} "${synopsis}")
  string(TOUPPER ${component} C)
  set(CPACK_DEBIAN_${C}_PACKAGE_SECTION ${section})
  set(CPACK_COMPONENT_${C}_DESCRIPTION "${synopsis}\n${KEYLINE_DESCRIPTION_${component}}")
  set(CPACK_DEBIAN_${C}_PACKAGE_DEPENDS "keyline-common (= ${KEYLINE_DEB_VERSION})")
endforeach()
foreach(row ${KEYLINE_SERVICES})
  string(REPLACE "|" ";" f "${row}")
  list(GET f 0 component)
  if(NOT component IN_LIST KEYLINE_PKG_COMPONENTS)
    continue()
  endif()
  list(GET f 1 users)
  list(GET f 2 token_users)
  list(GET f 3 units)
  list(GET f 4 configs)
  list(GET f 5 recommends)
  keyline_package_service(${component} "${users}" "${token_users}" "${units}" "${configs}" "${recommends}")
  string(TOUPPER ${component} C)
  # adduser makes the users (deb-systemd-invoke, which stops the units, is in init-system-helpers: essential).
  string(APPEND CPACK_DEBIAN_${C}_PACKAGE_DEPENDS ", adduser")
endforeach()

# The ceremony opens its root token through a PKCS#11 module; the recovery tool reaches cards through pcscd.
set(CPACK_DEBIAN_CEREMONY_PACKAGE_RECOMMENDS softhsm2)
set(CPACK_DEBIAN_RECOVERY_PACKAGE_SUGGESTS pcscd)

# keyline-common: docs and the migrations, architecture-independent.
keyline_package_docs(common)
file(GLOB keyline_docs ${CMAKE_SOURCE_DIR}/docs/*.md ${CMAKE_SOURCE_DIR}/docs/openapi.yaml)
install(FILES ${keyline_docs} DESTINATION share/doc/keyline-common COMPONENT common)
foreach(part backupdb station kps service)
  if(EXISTS ${CMAKE_SOURCE_DIR}/${part}/migrations)
    install(DIRECTORY ${CMAKE_SOURCE_DIR}/${part}/migrations DESTINATION share/keyline/${part} COMPONENT common
      FILES_MATCHING PATTERN "*.sql")
  endif()
endforeach()
set(CPACK_COMPONENT_COMMON_DESCRIPTION "shared files of the keyline programs\n${KEYLINE_DESCRIPTION_common}")
set(CPACK_DEBIAN_COMMON_PACKAGE_ARCHITECTURE all)
set(CPACK_DEBIAN_COMMON_PACKAGE_SECTION doc)
set(CPACK_DEBIAN_COMMON_PACKAGE_SHLIBDEPS OFF)

get_property(man_pages GLOBAL PROPERTY KEYLINE_PKG_GENERATED)
add_custom_target(keyline_package_files ALL DEPENDS ${KEYLINE_PKG_GENERATED} ${man_pages})

set(CPACK_GENERATOR DEB)
set(CPACK_DEB_COMPONENT_INSTALL ON)
set(CPACK_COMPONENTS_ALL ${KEYLINE_PKG_COMPONENTS})
set(CPACK_PACKAGE_NAME keyline)
set(CPACK_PACKAGE_VENDOR "keyline")
set(CPACK_PACKAGE_CONTACT "keyline maintainers <keyline@example.org>")
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_OUTPUT_FILE_PREFIX ${CMAKE_BINARY_DIR}/packages)
set(CPACK_STRIP_FILES ON)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_DEBIAN_PACKAGE_RELEASE ${KEYLINE_DEB_REVISION})
set(CPACK_DEBIAN_PACKAGE_PRIORITY optional)
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
set(CPACK_DEBIAN_PACKAGE_CONTROL_STRICT_PERMISSION ON)
include(CPack)
