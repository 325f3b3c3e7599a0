#    Licensed under the Apache License, Version 2.0 (the "License"); you may
#    not use this file except in compliance with the License. You may obtain
#    a copy of the License at
#
#         http://www.apache.org/licenses/LICENSE-2.0
#
#    Unless required by applicable law or agreed to in writing, software
#    distributed under the License is distributed on an "AS IS" BASIS, WITHOUT
#    WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied. See the
#    License for the specific language governing permissions and limitations
#    under the License.

"""Imported first by the operator CLI, before any OpenStack library.

futurist (which tooz and oslo libraries import) imports eventlet where it is
installed, as it is in Neutron's virtualenv, and eventlet warns on import
that it is deprecated: seven lines on stderr before every command's output,
about nothing the command does.  Only that warning is silenced, only in the
CLI's process (neutron-server's own imports are left as they are)."""

import warnings

warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")
